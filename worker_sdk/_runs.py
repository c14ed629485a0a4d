"""``RunStatus`` and ``RunInfo``: a run as the client sees it (``_run_codec.py`` decodes
them from the wire)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class RunStatus(enum.StrEnum):
    """Where a run stands in its life cycle."""

    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the statuses a run never leaves: completed, failed, cancelled."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as stored by the server.

    ``input`` and ``result`` are plain JSON values (dicts, lists, ...); use
    ``RunHandle.result()`` to get the result as the workflow's annotated type.
    The ``error_*`` fields are set when the run failed.
    """

    run_id: str
    workflow_name: str
    workflow_version: str
    status: RunStatus
    input: Any
    result: Any
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    parent_run_id: str | None
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    dispatch_count: int
    failure_reason: str | None = None
    """Why a failed run failed: workflow_error, deadline_exceeded, execution_timeout, ..."""
    cancel_reason: str | None = None
    """The reason given when the run was cancelled."""
    error_step_key: str | None = None
    """The step the run's error came from (None when raised by workflow code)."""
    error_attempt: int | None = None
    """The attempt of that step (1 for the first)."""
    deadline: datetime | None = None
    """The deadline given to ``trigger``, if any."""
    execution_deadline: datetime | None = None
    """The run's start plus its workflow's execution timeout, if it has one."""
    scheduled_start_time: datetime | None = None
    """The start time given to ``trigger(start_at=...)``: the run is not started before."""
    schedule_id: str | None = None
    """The schedule that started the run, if one did."""
    schedule_time: datetime | None = None
    """The schedule's occasion the run was started for."""
    root_run_id: str | None = None
    """The top-level run of this run's tree (its own id for a top-level run)."""
    detached: bool = False
    """For a child run: True when it outlives its parent."""
    held_error: str | None = None
    """Set while the run is held for non-determinism: why a worker's code refused it."""
    concurrency_key: str | None = None
    priority: int = 0
    """The run's priority (higher: handed out first)."""
    debounce_key: str | None = None
    """The run's key under its workflow's ``Debounce`` (None: no debounce)."""
    """The run's key under its workflow's ``Concurrency`` limit (None: no limit)."""
    waiting_reason: str = ""
    """Why a pending run is not started yet, e.g. "queued behind key 'c1' of limit
    'charge': 2 ahead" (``Client.get_run``; empty when nothing holds it back)."""
    progress: Any = None
    """The latest value the workflow reported with ``ctx.set_progress`` (None until then)."""
    idempotency_key: str | None = None
    """The idempotency key the run was started with, if any."""
    forked_from_run_id: str | None = None
    """For a run made by ``Client.fork``: the run it was forked from."""
    forked_from_step_key: str | None = None
    """For a run made by ``Client.fork``: the original's step it was forked from."""
    retry_count: int = 0
    """How many times ``Client.retry`` resumed the run."""
