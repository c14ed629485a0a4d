"""The audit log: who changed keys, schedules and versions.

One line per successful change, on the ``stepd.audit`` logger, naming the API
key id and what changed (ids and names only: never a key, a payload or an
input).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stepd.v1 import admin_service_pb2

log = logging.getLogger("stepd.audit")

_Describe = Callable[[Any, Any], str]


def _fields(*names: str) -> _Describe:
    def describe(request: Any, response: Any) -> str:
        return " ".join(f"{n}={getattr(request, n)!r}" for n in names if getattr(request, n))

    return describe


def _created_key(request: Any, response: Any) -> str:
    key = response.key
    role = admin_service_pb2.ApiKeyRole.Name(key.role)
    return f"key_id={key.key_id!r} name={key.name!r} role={role} workflows={list(key.workflows)}"


def _created_schedule(request: Any, response: Any) -> str:
    schedule = response.schedule
    return f"schedule_id={schedule.schedule_id!r} workflow_name={schedule.workflow_name!r}"


_SCHEDULE_ID = _fields("schedule_id")
_VERSION = _fields("workflow_name", "version")

#: The audited methods and what each line says about the change.
AUDITED: dict[str, _Describe] = {
    "/stepd.v1.AdminService/CreateApiKey": _created_key,
    "/stepd.v1.AdminService/RevokeApiKey": _fields("key_id"),
    "/stepd.v1.AdminService/PinWorkflowVersion": _VERSION,
    "/stepd.v1.AdminService/UnpinWorkflowVersion": _fields("workflow_name"),
    "/stepd.v1.AdminService/RetireWorkflowVersion": _VERSION,
    "/stepd.v1.WorkflowService/CreateSchedule": _created_schedule,
    "/stepd.v1.WorkflowService/PauseSchedule": _SCHEDULE_ID,
    "/stepd.v1.WorkflowService/ResumeSchedule": _SCHEDULE_ID,
    "/stepd.v1.WorkflowService/DeleteSchedule": _SCHEDULE_ID,
    "/stepd.v1.WorkflowService/TriggerSchedule": _SCHEDULE_ID,
}


def record(method: str, key_id: str, request: Any, response: Any) -> None:
    """Log one successful audited call (``method`` must be in ``AUDITED``)."""
    describe = AUDITED[method]
    try:
        what = describe(request, response)
    except Exception:  # a log line never fails a call
        what = "(undescribed)"
    log.info("%s by key %s: %s", method.rsplit("/", 1)[1], key_id or "-", what)
