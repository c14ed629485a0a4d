"""The run state machine: one table of allowed (status, event) -> status moves.

The engine hands the store a move (:func:`move`) with every change that ends,
cancels or re-queues a run, and the store applies it as a conditional write
(``status IN sources``), so a move that this table does not allow never changes
a row, whatever the timing.
"""

from __future__ import annotations

import enum
from collections import defaultdict

from stepd.server.domain import RunStatus, StatusMove


class RunEvent(enum.Enum):
    """Something that happens to a run."""

    DISPATCH = "dispatch"  # a worker takes a ready run under a lease
    RELEASE = "release"  # the worker gives it back, or its lease is lost
    SUSPEND = "suspend"  # the worker waits for the server (sleep, signal, ...)
    WAKE = "wake"  # a wait of a suspended run was met
    COMPLETE = "complete"  # the workflow returned
    FAIL = "fail"  # the workflow raised
    CANCEL = "cancel"  # a caller cancelled it
    EXPIRE = "expire"  # its deadline or execution timeout passed
    RETRY = "retry"  # an operator resumes a failed or cancelled run


P, R, S = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED

TRANSITIONS: dict[tuple[RunStatus, RunEvent], RunStatus] = {
    (P, RunEvent.DISPATCH): R,
    (R, RunEvent.RELEASE): P,
    (R, RunEvent.SUSPEND): S,
    (S, RunEvent.WAKE): P,
    (R, RunEvent.COMPLETE): RunStatus.COMPLETED,
    (R, RunEvent.FAIL): RunStatus.FAILED,
    (P, RunEvent.CANCEL): RunStatus.CANCELLED,
    (R, RunEvent.CANCEL): RunStatus.CANCELLED,
    (S, RunEvent.CANCEL): RunStatus.CANCELLED,
    (P, RunEvent.EXPIRE): RunStatus.FAILED,
    (R, RunEvent.EXPIRE): RunStatus.FAILED,
    (S, RunEvent.EXPIRE): RunStatus.FAILED,
    (RunStatus.FAILED, RunEvent.RETRY): P,
    (RunStatus.CANCELLED, RunEvent.RETRY): P,
}


def _index() -> tuple[dict[RunEvent, frozenset[RunStatus]], dict[RunEvent, RunStatus]]:
    froms: dict[RunEvent, set[RunStatus]] = defaultdict(set)
    to: dict[RunEvent, RunStatus] = {}
    for (status, event), new_status in TRANSITIONS.items():
        froms[event].add(status)
        if to.setdefault(event, new_status) != new_status:
            raise ValueError(f"event {event} must lead to one status")
    return {e: frozenset(s) for e, s in froms.items()}, to


_SOURCES, _TARGETS = _index()
_MOVES = {event: StatusMove(_SOURCES[event], _TARGETS[event]) for event in _TARGETS}


def sources(event: RunEvent) -> frozenset[RunStatus]:
    """The statuses from which ``event`` may happen."""
    return _SOURCES[event]


def target(event: RunEvent) -> RunStatus:
    """The status a run is in after ``event``."""
    return _TARGETS[event]


def move(event: RunEvent) -> StatusMove:
    """The move ``event`` makes: its sources and its target, for the store's guard."""
    return _MOVES[event]


def allowed(status: RunStatus, event: RunEvent) -> bool:
    """Whether ``event`` may happen to a run in ``status``."""
    return (status, event) in TRANSITIONS
