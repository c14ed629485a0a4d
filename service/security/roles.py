"""Roles, their rights, and the one table of RPC -> the right it needs.

Every method the server serves is in ``METHOD_RIGHTS`` or ``OPEN_METHODS``; a
test checks that against the services' descriptors, so a new RPC cannot be
added without deciding who may call it, and the interceptor refuses a method
it finds in neither (fail closed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stepd.server.domain_keys import Role


class Right(enum.StrEnum):
    """One thing a key may do."""

    CONNECT = "connect"  # server info and reflection
    READ = "read"  # runs, histories, schedules, versions
    START = "start"  # start runs
    CANCEL = "cancel"
    SIGNAL = "signal"
    EXECUTE_HOOK = "execute_hook"
    PUBLISH_EVENT = "publish_event"
    MANAGE_SCHEDULES = "manage_schedules"
    MANAGE_RUNS = "manage_runs"  # retry, fork, delete, bulk retry
    MANAGE_VERSIONS = "manage_versions"
    MANAGE_KEYS = "manage_keys"
    SERVE = "serve"  # the worker stream


ROLE_RIGHTS: dict[Role, frozenset[Right]] = {
    Role.ADMIN: frozenset(Right),
    Role.OPERATOR: frozenset(
        {
            Right.CONNECT,
            Right.READ,
            Right.START,
            Right.CANCEL,
            Right.SIGNAL,
            Right.MANAGE_SCHEDULES,
            Right.MANAGE_RUNS,
        }
    ),
    Role.CLIENT: frozenset(
        {
            Right.CONNECT,
            Right.READ,
            Right.START,
            Right.SIGNAL,
            Right.EXECUTE_HOOK,
            Right.PUBLISH_EVENT,
        }
    ),
    Role.READER: frozenset({Right.CONNECT, Right.READ}),
    Role.WORKER: frozenset({Right.SERVE}),
}

_WORKFLOW = "/stepd.v1.WorkflowService/"
_ADMIN = "/stepd.v1.AdminService/"

#: The right each RPC needs, by full method name.
METHOD_RIGHTS: dict[str, Right] = {
    _WORKFLOW + "Trigger": Right.START,
    _WORKFLOW + "GetRun": Right.READ,
    _WORKFLOW + "ListRuns": Right.READ,
    _WORKFLOW + "CancelRun": Right.CANCEL,
    _WORKFLOW + "Signal": Right.SIGNAL,
    _WORKFLOW + "ExecuteHook": Right.EXECUTE_HOOK,
    _WORKFLOW + "PublishEvent": Right.PUBLISH_EVENT,
    _WORKFLOW + "ListRunEvents": Right.READ,
    _WORKFLOW + "GetServerInfo": Right.CONNECT,
    _WORKFLOW + "CreateSchedule": Right.MANAGE_SCHEDULES,
    _WORKFLOW + "GetSchedule": Right.READ,
    _WORKFLOW + "ListSchedules": Right.READ,
    _WORKFLOW + "PauseSchedule": Right.MANAGE_SCHEDULES,
    _WORKFLOW + "ResumeSchedule": Right.MANAGE_SCHEDULES,
    _WORKFLOW + "DeleteSchedule": Right.MANAGE_SCHEDULES,
    _WORKFLOW + "TriggerSchedule": Right.MANAGE_SCHEDULES,
    _WORKFLOW + "WatchRun": Right.READ,
    _WORKFLOW + "RetryRun": Right.MANAGE_RUNS,
    _WORKFLOW + "ForkRun": Right.MANAGE_RUNS,
    _WORKFLOW + "DeleteRun": Right.MANAGE_RUNS,
    _WORKFLOW + "CancelRuns": Right.CANCEL,
    _WORKFLOW + "RetryRuns": Right.MANAGE_RUNS,
    _WORKFLOW + "ListWorkers": Right.READ,
    _WORKFLOW + "ListFlowLimits": Right.READ,
    "/stepd.v1.WorkerService/PollTask": Right.SERVE,
    _ADMIN + "CreateApiKey": Right.MANAGE_KEYS,
    _ADMIN + "ListApiKeys": Right.MANAGE_KEYS,
    _ADMIN + "RevokeApiKey": Right.MANAGE_KEYS,
    _ADMIN + "ListWorkflowVersions": Right.READ,
    _ADMIN + "PinWorkflowVersion": Right.MANAGE_VERSIONS,
    _ADMIN + "UnpinWorkflowVersion": Right.MANAGE_VERSIONS,
    _ADMIN + "RetireWorkflowVersion": Right.MANAGE_VERSIONS,
    # Reflection describes the API to an authenticated caller.
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Right.CONNECT,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Right.CONNECT,
}

#: Methods anyone may call: health, for load balancers and container checks.
#: It tells only whether the server is serving.
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

#: The worker stream: its hello is checked against the key's workflows.
WORKER_STREAM = "/stepd.v1.WorkerService/PollTask"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a call: an API key, its role and what it may do."""

    key_id: str
    name: str
    role: Role
    workflows: tuple[str, ...] = ()

    @property
    def rights(self) -> frozenset[Right]:
        """What the key's role may do."""
        return ROLE_RIGHTS[self.role]

    def may_serve(self, workflow: str) -> bool:
        """Whether a worker holding this key may serve ``workflow``: an admin key
        serves any; a worker key the names (or ``prefix*`` patterns) it lists."""
        if self.role is Role.ADMIN:
            return True
        if self.role is not Role.WORKER:
            return False
        return any(
            workflow.startswith(pattern[:-1]) if pattern.endswith("*") else workflow == pattern
            for pattern in self.workflows
        )


def check_workflow_patterns(patterns: list[str] | tuple[str, ...]) -> str | None:
    """Why a worker key's workflow list is unusable, or None when it is fine."""
    if not patterns:
        return "a worker key needs at least one workflow (a name, or a prefix ending in *)"
    for pattern in patterns:
        if not pattern.strip() or pattern != pattern.strip():
            return f"workflow {pattern!r} is empty or has spaces around it"
        if "*" in pattern[:-1] or any(c in pattern for c in "?[]"):
            return f"workflow {pattern!r}: only a trailing * is allowed as a wildcard"
    return None
