"""What workers ask the engine to record, and what the engine answers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stepd.server.domain import NO_TRACE, ErrorDetails, StepRow, TraceContext, WaitSpec


@dataclass(frozen=True, slots=True)
class PayloadIn:
    """A payload as it arrived: JSON text, or an encoding the server may reject."""

    json: str
    encoding: str = ""


@dataclass(frozen=True, slots=True)
class RecordStep:
    """Record one step outcome; ``result`` is None when ``step.error`` is set."""

    step: StepRow
    result: PayloadIn | None


@dataclass(frozen=True, slots=True)
class CompleteRun:
    """Finish the run with a result; with ``if_steps_recorded``, only when no step
    record sent before it under its lease was answered DUPLICATE."""

    result: PayloadIn
    if_steps_recorded: bool = False


@dataclass(frozen=True, slots=True)
class FailRun:
    """Finish the run with an error (``if_steps_recorded`` as for ``CompleteRun``)."""

    error: ErrorDetails
    if_steps_recorded: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseRun:
    """Give the run back to the queue unchanged."""

    reason: str


@dataclass(frozen=True, slots=True)
class SuspendRun:
    """Suspend the run until one of its waits is met."""

    waits: tuple[WaitSpec, ...]


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """Append a custom entry to the run's history, once per key."""

    entry_key: str
    name: str
    payload: PayloadIn
    progress: bool = False  # the entry is the run's progress


@dataclass(frozen=True, slots=True)
class StartStep:
    """A step attempt with a timeout started (tracked in memory, not stored)."""

    step_key: str
    attempt: int
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class AcquireRate:
    """Take a turn under a rate limit before a step attempt (``rate_limits.py``)."""

    name: str
    key: str
    limit: int
    period_ms: int
    step_key: str


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start a child run once per ``child_key`` and record its journal entry."""

    child_key: str
    workflow_name: str
    workflow_version: str
    input: PayloadIn
    detached: bool
    # The parent's trace context where it started the child (none: the parent run's).
    trace: TraceContext = NO_TRACE


@dataclass(frozen=True, slots=True)
class HoldRun:
    """Give the run back as held for non-determinism."""

    error: ErrorDetails


@dataclass(frozen=True, slots=True)
class Malformed:
    """A command whose fields the API edge could not accept (e.g. a time out of
    range): answered INVALID with ``reason``. Like any invalid command it fails
    the run, except a malformed custom entry (``fails_run`` False), which is
    only dropped."""

    reason: str
    fails_run: bool = True


Action = (
    RecordStep
    | CompleteRun
    | FailRun
    | ReleaseRun
    | SuspendRun
    | RecordEvent
    | StartStep
    | AcquireRate
    | StartChild
    | HoldRun
    | Malformed
)


@dataclass(frozen=True, slots=True)
class Command:
    """One worker command for one run under one lease."""

    command_id: int
    run_id: str
    lease_id: int
    action: Action | None


class CommandStatus(enum.Enum):
    """How a command ended (mirrors stepd.v1.CommandStatus)."""

    OK = "ok"
    DUPLICATE = "duplicate"
    LEASE_LOST = "lease_lost"
    INVALID = "invalid"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer to one command."""

    command_id: int
    status: CommandStatus
    message: str = ""
    recorded_step: StepRow | None = None
    # For acquire_rate: start the attempt after this many milliseconds.
    start_after_ms: int = 0
