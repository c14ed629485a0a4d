"""Checks on request fields that name things: ids, wait conditions."""

from __future__ import annotations

import json
import re

from stepd.server.domain import WaitKind, WaitSpec
from stepd.server.engine.errors import InvalidArgument

MAX_ID_LENGTH = 200
_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")


def check_waits(waits: tuple[WaitSpec, ...]) -> None:
    """Reject a suspension whose waits are missing, duplicated or incomplete."""
    if not waits:
        raise InvalidArgument("suspend_run.waits must name at least one wait")
    keys = [w.wait_key for w in waits]
    if "" in keys:
        raise InvalidArgument("suspend_run.waits: every wait needs a wait_key")
    if len(set(keys)) != len(keys):
        raise InvalidArgument("suspend_run.waits: wait keys must be unique")
    for wait in waits:
        if wait.kind is WaitKind.EVENT:
            check_event_wait(wait)
        elif wait.kind is WaitKind.SIGNAL:
            if not wait.target:
                raise InvalidArgument(
                    f"suspend_run.waits[{wait.wait_key}]: a signal wait needs the signal's name"
                )
        elif wait.kind is WaitKind.CHILD:
            if not wait.target:
                raise InvalidArgument(
                    f"suspend_run.waits[{wait.wait_key}]: a child wait needs the child's run_id"
                )
        elif wait.kind is WaitKind.TIMER and wait.fire_time is None:
            raise InvalidArgument(
                f"suspend_run.waits[{wait.wait_key}]: this server serves timer waits "
                "with a fire_time, signal and event waits with a name, and hook waits"
            )


def check_event_wait(wait: WaitSpec) -> None:
    """Reject an event wait without a name or start, or with a match that is not an object."""
    where = f"suspend_run.waits[{wait.wait_key}]"
    if not wait.target:
        raise InvalidArgument(f"{where}: an event wait needs the event's name")
    if wait.since_time is None:
        raise InvalidArgument(f"{where}: an event wait needs `since`, when the wait began")
    if wait.match_json:
        try:
            match = json.loads(wait.match_json)
        except ValueError:
            raise InvalidArgument(f"{where}: match_json is not valid JSON") from None
        if not isinstance(match, dict):
            raise InvalidArgument(f"{where}: match_json must be a JSON object of fields")


def check_id(field: str, value: str) -> None:
    """Reject an id that is too long or has characters outside the allowed set."""
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} is {len(value)} characters; at most {MAX_ID_LENGTH}")
    if not _ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value!r} may contain only letters, digits and . _ : @ / + = -"
        )
