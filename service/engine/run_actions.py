"""Operator actions on whole runs: retry, fork, delete, and bulk cancel or retry
by a ``ListRuns`` filter.

``RunActions`` receives its collaborators (the store, the lifecycle, the
failure policy, the registry) and never reaches into the engine. Every
action on one run is one store write; a bulk action works in bounded batches
(one per call), newest run first, with a cursor (the last run's ``seq``) that
the caller passes back. A batch acts only on runs the action can change (an
unfinished run for cancel, a failed or cancelled one for retry), so repeating
an interrupted bulk action from the start changes only what is left, and a
finished one changes nothing.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.config import ServerConfig
from stepd.server.domain import NewRun, RunFilter, RunRecord, RunStatus
from stepd.server.engine.errors import (
    AlreadyExists,
    EngineError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from stepd.server.engine.lifecycle import RunLifecycle
from stepd.server.engine.registry import WorkflowRegistry
from stepd.server.engine.run_policy import RunPolicy
from stepd.server.engine.validation import MAX_ID_LENGTH, check_id, shown
from stepd.server.store.base import Store
from stepd.server.store.run_actions import DeadlineChange, DeleteStatus, ForkStatus
from stepd.server.store.schedules import RESERVED_KEY_PREFIX

#: Runs a bulk action call acts on by default, and at most.
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 1000
#: Runs of one batch changed at once (their writes share group commits).
BULK_CONCURRENCY = 64

_UNFINISHED = frozenset(s for s in RunStatus if not s.is_terminal)
_RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})


class BulkAction(enum.Enum):
    """What a bulk action does to each run it selects."""

    CANCEL = "cancel"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What one call of a bulk action did: with ``dry_run``, ``matched`` is how
    many runs it would change; otherwise how many runs the batch looked at."""

    matched: int
    changed: int = 0
    skipped: int = 0
    next_seq: int | None = None  # the cursor of the next batch; None when done


@dataclass(frozen=True, slots=True)
class ForkParams:
    """A ForkRun request, decoded."""

    run_id: str
    step_key: str
    new_run_id: str = ""
    workflow_version: str = ""
    request_id: str = ""
    deadline: int | None = None


class RunActions:
    """Retry, fork, delete and bulk actions, over the store and the lifecycle."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        registry: WorkflowRegistry,
        lifecycle: RunLifecycle,
        policy: RunPolicy,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._config = config
        self._registry = registry
        self._lifecycle = lifecycle
        self._policy = policy
        self._clock = clock

    async def retry(
        self, run_id: str, deadline: DeadlineChange, *, reason: str = "", actor: str = ""
    ) -> RunRecord:
        """Resume a failed or cancelled run where it stopped."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        run = await self._lifecycle.retry(run_id, deadline, reason=reason, actor=actor)
        self._policy.schedule_expiry(run)
        return run

    async def fork(self, params: ForkParams, *, actor: str = "") -> tuple[RunRecord, bool]:
        """Start a fork of a run from one of its steps; return it and whether the
        request id had made it before."""
        if not params.run_id:
            raise InvalidArgument("run_id is required")
        if not params.step_key:
            raise InvalidArgument("step_key is required")
        if len(params.step_key) > MAX_ID_LENGTH:
            raise InvalidArgument(f"step_key is longer than {MAX_ID_LENGTH} characters")
        if params.new_run_id:
            check_id("new_run_id", params.new_run_id)
        if params.request_id:
            check_id("request_id", params.request_id)
        if len(params.workflow_version) > MAX_ID_LENGTH:
            raise InvalidArgument(f"workflow_version is longer than {MAX_ID_LENGTH} characters")
        source = await self._store.get_run(params.run_id)
        if source is None:
            raise NotFound(f"run {shown(params.run_id)} not found")
        version = params.workflow_version or source.workflow_version
        if version and self._registry.retired(source.workflow_name, version):
            raise FailedPrecondition(
                f"version {version!r} of {source.workflow_name!r} is retired; fork onto another"
            )
        now = self._clock.now_ms()
        new_id = params.new_run_id or uuid.uuid4().hex
        key = None
        if params.request_id:
            key = f"{RESERVED_KEY_PREFIX}fork:{params.run_id}:{params.request_id}"
        new = NewRun(
            run_id=new_id,
            workflow_name=source.workflow_name,
            workflow_version=version,
            input_json=source.input_json,
            create_time=now,
            idempotency_key=key,
            root_run_id=new_id,
            deadline=params.deadline,
            priority=source.priority,  # a fork keeps its source's priority
        )
        outcome = await self._store.fork_run(params.run_id, params.step_key, new, actor=actor)
        if outcome.status is ForkStatus.NOT_FOUND:
            raise NotFound(f"run {shown(params.run_id)} not found")
        if outcome.status is ForkStatus.NO_STEP:
            raise FailedPrecondition(
                f"run {shown(params.run_id)} has no recorded step {shown(params.step_key)}; "
                "ListRunEvents shows its steps' keys"
            )
        if outcome.status is ForkStatus.CHILD_UNFINISHED:
            raise FailedPrecondition(
                f"child run {shown(outcome.child_run_id)}, started before that step, has not "
                "finished; fork from an earlier step or once it finished"
            )
        if outcome.status is ForkStatus.ID_TAKEN or outcome.run is None:
            raise AlreadyExists(f"run_id {shown(new_id)} already exists; pick another id")
        if outcome.status is ForkStatus.EXISTED:
            return outcome.run, True
        self._lifecycle.make_ready(outcome.run)
        self._policy.schedule_expiry(outcome.run)
        return outcome.run, False

    async def delete(self, run_id: str) -> None:
        """Delete a finished run with its journal, waits and history."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        status, current = await self._store.delete_run(run_id)
        if status is DeleteStatus.NOT_FOUND:
            raise NotFound(f"run {shown(run_id)} not found")
        if status is DeleteStatus.NOT_FINISHED:
            shown_status = current.value if current is not None else "unfinished"
            raise FailedPrecondition(
                f"run {shown(run_id)} is {shown_status}; only finished runs can be deleted "
                "(cancel it first)"
            )

    async def bulk(
        self,
        action: BulkAction,
        run_filter: RunFilter,
        *,
        dry_run: bool,
        batch_size: int,
        before_seq: int | None,
        reason: str = "",
        actor: str = "",
    ) -> BulkResult:
        """Apply ``action`` to one batch of the runs ``run_filter`` selects (those the
        action can change), after ``before_seq``; with ``dry_run``, count them."""
        if batch_size < 0:
            raise InvalidArgument("batch_size must not be negative")
        size = min(batch_size or DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE)
        changeable = _UNFINISHED if action is BulkAction.CANCEL else _RETRYABLE
        statuses = changeable if run_filter.statuses is None else run_filter.statuses & changeable
        if not statuses:
            return BulkResult(0)
        selected = replace(run_filter, statuses=frozenset(statuses))
        if dry_run:
            return BulkResult(await self._store.count_matching_runs(selected))
        batch = await self._store.matching_runs(selected, before_seq, size)
        act = self._cancel_one if action is BulkAction.CANCEL else self._retry_one
        outcomes = await _bounded(
            [functools.partial(act, run_id, reason, actor) for _, run_id in batch],
            BULK_CONCURRENCY,
        )
        changed = sum(outcomes)
        next_seq = batch[-1][0] if len(batch) == size else None
        return BulkResult(len(batch), changed, len(batch) - changed, next_seq)

    async def _cancel_one(self, run_id: str, reason: str, actor: str) -> bool:
        try:
            _, already = await self._lifecycle.cancel(run_id, reason or "cancelled", actor=actor)
        except (FailedPrecondition, NotFound):
            return False  # it ended, or was deleted, meanwhile
        return not already

    async def _retry_one(self, run_id: str, reason: str, actor: str) -> bool:
        try:
            await self.retry(run_id, DeadlineChange(), reason=reason, actor=actor)
        except (FailedPrecondition, NotFound):
            return False  # it moved meanwhile, or its deadline passed
        return True


async def _bounded(calls: list[Callable[[], Awaitable[bool]]], limit: int) -> list[bool]:
    """Run ``calls`` with at most ``limit`` in flight; their results in order. An
    engine error of one call counts as False; anything else is raised."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[bool]]) -> bool:
        async with gate:
            try:
                return await call()
            except EngineError:
                return False

    return list(await asyncio.gather(*(one(call) for call in calls)))
