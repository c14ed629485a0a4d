"""Checks on request fields that name things: ids, wait conditions."""

from __future__ import annotations

import re

from stepd.server.domain import WaitKind, WaitSpec
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.payloads import parse_json

#: The longest id, name, key or version (characters).
MAX_ID_LENGTH = 200
#: The longest free text kept or logged: reasons, identities, hook tokens (characters).
MAX_TEXT_LENGTH = 1000
#: About the most payload bytes one page of a listing carries (at least one item):
#: under the 4 MiB a gRPC client receives by default.
MAX_PAGE_BYTES = 3 * 1024 * 1024
#: The largest event wait match (a JSON object of a few fields), in characters.
MAX_MATCH_LENGTH = 64 * 1024
#: The most bytes of a worker's hello.
MAX_HELLO_BYTES = 16 * 1024 * 1024
#: The most bytes of any other message a worker sends on its PollTask stream (or
#: the payload limit and 1 MiB, if that is more): a message costs the event loop
#: about 5 ms per MiB to decode, and a worker splits its batches.
MIN_WORKER_MESSAGE_BYTES = 4 * 1024 * 1024


def worker_message_bytes(max_payload_bytes: int) -> int:
    """The most bytes of one worker message after the hello, for a payload limit."""
    return max(MIN_WORKER_MESSAGE_BYTES, max_payload_bytes + 1024 * 1024)


#: The most commands one PollTask message (WorkerCommandBatch) carries.
MAX_BATCH_COMMANDS = 1000
#: The most workflow versions one hello registers.
MAX_HELLO_WORKFLOWS = 1000
#: The most versions of one workflow one hello registers.
MAX_HELLO_VERSIONS = 100
#: The most event triggers one workflow registration declares.
MAX_EVENT_TRIGGERS = 32
#: The largest capacity (runs held at once), early_capacity and max_cached_runs a
#: hello declares.
MAX_CAPACITY = 10_000
MAX_CACHED_RUNS = 100_000
#: The longest execution timeout a workflow registration declares (10 years).
MAX_EXECUTION_TIMEOUT_MS = 3650 * 86_400_000
#: The most versions of one workflow the server keeps registered.
MAX_VERSIONS_PER_WORKFLOW = 1000
#: The most workflows (names) the server keeps registered.
MAX_WORKFLOWS = 10_000
#: How much of a caller's value an error message quotes back (characters).
ECHO_CHARS = 40
_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")


def shown(value: str) -> str:
    """``value`` quoted for an error message: its first ECHO_CHARS characters."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}… ({len(value)} characters)"


def check_name(
    field: str, value: str, *, required: bool = False, max_length: int = MAX_ID_LENGTH
) -> None:
    """Reject a name, key or reference that is missing (when required), longer
    than ``max_length`` characters or holds a NUL character (no database keeps one)."""
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required")
        return
    if len(value) > max_length:
        raise InvalidArgument(f"{field} is {len(value)} characters; at most {max_length}")
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")


def check_text(field: str, value: str, max_length: int = MAX_TEXT_LENGTH) -> None:
    """Reject free text (a reason, an identity) that is too long or holds a NUL."""
    check_name(field, value, max_length=max_length)


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
        where = f"suspend_run.waits[{shown(wait.wait_key)}]"
        if wait.kind is WaitKind.EVENT:
            check_event_wait(wait)
        elif wait.kind is WaitKind.SIGNAL:
            if not wait.target:
                raise InvalidArgument(f"{where}: a signal wait needs the signal's name")
        elif wait.kind is WaitKind.CHILD:
            if not wait.target:
                raise InvalidArgument(f"{where}: a child wait needs the child's run_id")
        elif wait.kind is WaitKind.TIMER and wait.fire_time is None:
            raise InvalidArgument(
                f"{where}: this server serves timer waits "
                "with a fire_time, signal and event waits with a name, and hook waits"
            )


def check_event_wait(wait: WaitSpec) -> None:
    """Reject an event wait without a name or start, or with a match that is not an object."""
    where = f"suspend_run.waits[{shown(wait.wait_key)}]"
    if not wait.target:
        raise InvalidArgument(f"{where}: an event wait needs the event's name")
    if wait.since_time is None:
        raise InvalidArgument(f"{where}: an event wait needs `since`, when the wait began")
    if wait.match_json:
        if len(wait.match_json) > MAX_MATCH_LENGTH:
            raise InvalidArgument(
                f"{where}: match_json is {len(wait.match_json)} characters; "
                f"at most {MAX_MATCH_LENGTH}"
            )
        match = parse_json(f"{where}: match_json", wait.match_json)
        if not isinstance(match, dict):
            raise InvalidArgument(f"{where}: match_json must be a JSON object of fields")


def check_id(field: str, value: str) -> None:
    """Reject an id that is too long or has characters outside the allowed set."""
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field} is {len(value)} characters; at most {MAX_ID_LENGTH}")
    if not _ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {shown(value)} may contain only letters, digits and . _ : @ / + = -"
        )
