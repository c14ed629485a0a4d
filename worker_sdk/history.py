"""A run's history as the client sees it: ``RunEvent`` and ``RunEventType``.

``Client.list_run_events(run_id)`` yields the entries of a run's history, oldest
first: when it was triggered and dispatched, each step outcome, each
suspension, met wait and signal, custom entries written with ``ctx.log`` /
``ctx.record``, and how it ended.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stepd._serde import loads, payload_text
from stepd.v1 import types_pb2

__all__ = ["RunEvent", "RunEventType"]


class RunEventType(enum.StrEnum):
    """What one entry of a run's history records."""

    TRIGGERED = "triggered"
    """The run was created (``Trigger``)."""
    DISPATCHED = "dispatched"
    """The run was handed to a worker: ``detail`` names it, ``attempt`` is the lease."""
    STEP_COMPLETED = "step_completed"
    """A step attempt returned: ``key`` is the step key, ``payload`` its result."""
    STEP_FAILED = "step_failed"
    """A step attempt raised: ``key`` is the step key, ``error_*`` the error;
    ``attempt_only`` when the step went on with another attempt."""
    SUSPENDED = "suspended"
    """The run suspended: ``detail`` lists the wait keys."""
    WAIT_MET = "wait_met"
    """A wait was met and the run woke: ``key`` is the wait key, ``payload`` what it
    delivered (a signal's, event's or hook's payload, a child's outcome)."""
    SIGNAL_RECEIVED = "signal_received"
    """A signal was sent to the run: ``name`` and ``payload``."""
    RELEASED = "released"
    """The run went back to the queue (worker gone, lease expired, released)."""
    COMPLETED = "completed"
    """The run completed: ``payload`` is its result."""
    FAILED = "failed"
    """The run failed: ``error_*`` describe the error."""
    CANCELLED = "cancelled"
    """The run was cancelled: ``detail`` is the reason."""
    CUSTOM = "custom"
    """An entry the workflow wrote (``ctx.log``, ``ctx.record``): ``key``, ``name``,
    ``payload``."""
    HELD = "held"
    """A worker held the run for non-determinism: ``error_*`` say why."""
    CHILD_STARTED = "child_started"
    """The run started a child run: ``key`` is the call's key, ``detail`` the child's id."""
    PROGRESS = "progress"
    """The workflow reported progress (``ctx.set_progress``): ``payload`` is the value."""
    RETRIED = "retried"
    """An operator retried the run (``Client.retry``): ``detail`` says from which
    status, ``actor_key_id`` who."""
    FORKED = "forked"
    """A fork of this run was made (``Client.fork``): ``detail`` is the new run's id,
    ``key`` the step it was forked from."""
    FORKED_FROM = "forked_from"
    """This run is a fork: ``detail`` is the original run's id, ``key`` the step."""
    UNKNOWN = "unknown"
    """A kind of entry this SDK does not know (from a newer server)."""


_FROM_PROTO: dict[int, RunEventType] = {
    types_pb2.RUN_EVENT_TYPE_TRIGGERED: RunEventType.TRIGGERED,
    types_pb2.RUN_EVENT_TYPE_DISPATCHED: RunEventType.DISPATCHED,
    types_pb2.RUN_EVENT_TYPE_STEP_COMPLETED: RunEventType.STEP_COMPLETED,
    types_pb2.RUN_EVENT_TYPE_STEP_FAILED: RunEventType.STEP_FAILED,
    types_pb2.RUN_EVENT_TYPE_SUSPENDED: RunEventType.SUSPENDED,
    types_pb2.RUN_EVENT_TYPE_WAIT_MET: RunEventType.WAIT_MET,
    types_pb2.RUN_EVENT_TYPE_SIGNAL_RECEIVED: RunEventType.SIGNAL_RECEIVED,
    types_pb2.RUN_EVENT_TYPE_RELEASED: RunEventType.RELEASED,
    types_pb2.RUN_EVENT_TYPE_COMPLETED: RunEventType.COMPLETED,
    types_pb2.RUN_EVENT_TYPE_FAILED: RunEventType.FAILED,
    types_pb2.RUN_EVENT_TYPE_CANCELLED: RunEventType.CANCELLED,
    types_pb2.RUN_EVENT_TYPE_CUSTOM: RunEventType.CUSTOM,
    types_pb2.RUN_EVENT_TYPE_HELD: RunEventType.HELD,
    types_pb2.RUN_EVENT_TYPE_CHILD_STARTED: RunEventType.CHILD_STARTED,
    types_pb2.RUN_EVENT_TYPE_PROGRESS: RunEventType.PROGRESS,
    types_pb2.RUN_EVENT_TYPE_RETRIED: RunEventType.RETRIED,
    types_pb2.RUN_EVENT_TYPE_FORKED: RunEventType.FORKED,
    types_pb2.RUN_EVENT_TYPE_FORKED_FROM: RunEventType.FORKED_FROM,
}


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One entry of a run's history.

    ``payload`` is plain JSON values (a step or run result, a signal payload, a
    custom entry's content; None when there is none). Fields an entry does not
    use are None (``attempt``: 0).
    """

    sequence: int
    """The entry's position in the run's history (increasing, not dense)."""
    type: RunEventType
    """What happened."""
    time: datetime | None
    """When it happened, by the server's clock (UTC)."""
    key: str | None = None
    """The step, wait or custom entry key."""
    name: str | None = None
    """The signal's or custom entry's name."""
    payload: Any = None
    """The step result, signal payload, what a met wait delivered, custom entry content
    or run result."""
    error_type: str | None = None
    """The qualified type of a failed step's or run's error."""
    error_message: str | None = None
    """The error's message."""
    error_traceback: str | None = None
    """The error's traceback, when known."""
    attempt: int = 0
    """The step attempt, or the lease of a dispatch."""
    detail: str | None = None
    """A human-readable detail: worker identity, reason, wait keys."""
    actor_key_id: str | None = None
    """The id of the API key whose call caused it (a cancel, a signal, a hook
    execution, an event), on a server that requires keys."""
    attempt_only: bool = False
    """For a failed step attempt: True when it is not the step's outcome (the step
    went on under its retry policy)."""

    @classmethod
    def from_proto(cls, event: types_pb2.RunEvent) -> RunEvent:
        """Decode a ``stepd.v1.RunEvent``."""
        has_error = event.HasField("error") and bool(event.error.type or event.error.message)
        return cls(
            sequence=event.sequence,
            type=_FROM_PROTO.get(event.type, RunEventType.UNKNOWN),
            time=event.time.ToDatetime(tzinfo=UTC) if event.HasField("time") else None,
            key=event.key or None,
            name=event.name or None,
            payload=loads(payload_text(event.payload)) if event.HasField("payload") else None,
            error_type=event.error.type if has_error else None,
            error_message=event.error.message if has_error else None,
            error_traceback=(event.error.traceback or None) if has_error else None,
            attempt=event.attempt,
            detail=event.detail or None,
            actor_key_id=event.actor_key_id or None,
            attempt_only=event.attempt_only,
        )
