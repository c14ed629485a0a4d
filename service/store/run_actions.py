"""Operator actions on whole runs, inside the caller's write transaction: retry a
finished run, fork a run from one of its steps, delete a finished run (one, or
a batch of expired ones).

A retry keeps the run's journal but takes the failure out of it: the outcome
of the step that failed the run (and that step's failed attempts and backoff
waits) leaves the journal, so the step runs again; the failure itself stays in
the history as a ``run_events`` row (``history.add_kept_failure``), as does
the run's own FAILED entry, which was read from the run's row until then.

A fork is a new run whose journal is a copy of the original's entries up to
and including one step's outcome, in the original's journal order (the copies
keep their leases, and the fork's dispatch count starts at the last of them,
so the fork's own entries sort after them).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, func, select, update

from stepd.server.clock import Clock
from stepd.server.domain import (
    TERMINAL_STATUSES,
    ErrorDetails,
    HistoryType,
    NewRun,
    RunFilter,
    RunRecord,
    RunStatus,
    StatusMove,
    WaitStatus,
)
from stepd.server.store import concurrency, flow, history, listing, rows
from stepd.server.store.dialects import insert_for, lock_run
from stepd.server.store.executor import Committer, Reader
from stepd.server.store.schema import (
    hooks,
    run_events,
    run_waits,
    runs,
    signals,
    step_attempts,
    steps,
)

_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)
_UNFINISHED = sorted(s.value for s in RunStatus if not s.is_terminal)
#: The tables that hold a run's rows besides ``runs`` (all keyed by run_id).
_RUN_TABLES = (steps, step_attempts, run_waits, signals, run_events, hooks)


class RetryStatus(enum.Enum):
    """What a retry did."""

    RETRIED = "retried"
    NOT_FOUND = "not_found"
    WRONG_STATUS = "wrong_status"  # not in one of the move's sources
    DEADLINE_PASSED = "deadline_passed"  # the kept deadline is behind us


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """The outcome and the run (as it is now, whatever the outcome)."""

    status: RetryStatus
    run: RunRecord | None = None


@dataclass(frozen=True, slots=True)
class DeadlineChange:
    """What a retry does to the run's deadline: keep it, set a new one, or clear it."""

    keep: bool = True
    deadline: int | None = None


def retry(
    conn: Connection,
    run_id: str,
    move: StatusMove,
    deadline: DeadlineChange,
    now: int,
    *,
    reason: str = "",
    actor: str = "",
) -> RetryOutcome:
    """Move a finished run (one of ``move.sources``) back to PENDING, keeping its
    journal without the failure that ended it; see the module docstring."""
    lock_run(conn, run_id)
    row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if row is None:
        return RetryOutcome(RetryStatus.NOT_FOUND)
    run = rows.run_from_row(row)
    if run.status not in move.sources:
        return RetryOutcome(RetryStatus.WRONG_STATUS, run)
    new_deadline = run.deadline if deadline.keep else deadline.deadline
    if new_deadline is not None and new_deadline <= now:
        return RetryOutcome(RetryStatus.DEADLINE_PASSED, run)
    if run.status is RunStatus.FAILED and run.error is not None:
        history.add_kept_failure(conn, run_id, HistoryType.FAILED, run.end_time or now, run.error)
        if run.error.step_key:
            _unrecord_failed_step(conn, run_id, run.error.step_key)
    updated = (
        conn.execute(
            update(runs)
            .where(
                runs.c.run_id == run_id, runs.c.status.in_(sorted(s.value for s in move.sources))
            )
            .values(
                status=move.target.value,
                **rows.error_columns(None),
                failure_reason=None,
                result_json=None,
                end_time=None,
                cancel_reason=None,
                held_error_type=None,
                held_error_message=None,
                lease_owner=None,
                lease_expires_at=None,
                deadline=new_deadline,
                # A new execution timeout starts at the next claim.
                execution_deadline=None,
                expire_time=new_deadline,
                retry_count=func.coalesce(runs.c.retry_count, 0) + 1,
                # A limited run retried waits for room at its key again (the
                # engine's key check admits it); an unlimited one stays NULL.
                admitted=case((runs.c.concurrency_name.is_not(None), 0), else_=None),
                update_time=now,
            )
            .returning(*runs.c)
        )
        .mappings()
        .one()
    )
    detail = f"retried from {run.status.value}" + (f": {reason}" if reason else "")
    history.add(conn, run_id, HistoryType.RETRIED, now, detail=detail, actor=actor or None)
    return RetryOutcome(RetryStatus.RETRIED, rows.run_from_row(updated))


def _unrecord_failed_step(conn: Connection, run_id: str, step_key: str) -> None:
    """Take a failed step's outcome, failed attempts and retry backoffs out of the
    journal (keeping each failure in the history), so that the step runs again."""
    outcome = (
        conn.execute(
            select(steps).where(
                steps.c.run_id == run_id,
                steps.c.step_key == step_key,
                steps.c.error_type.is_not(None),
            )
        )
        .mappings()
        .first()
    )
    attempts = conn.execute(
        select(step_attempts)
        .where(step_attempts.c.run_id == run_id, step_attempts.c.step_key == step_key)
        .order_by(step_attempts.c.sequence)
    ).mappings()
    for attempt in [*attempts, *([outcome] if outcome is not None else [])]:
        error = rows.error_from_row({**attempt, "error_traceback": None})
        if error is not None:
            kept = ErrorDetails(error.type, error.message, "", step_key, attempt["attempt"])
            history.add_kept_failure(
                conn, run_id, HistoryType.STEP_FAILED, attempt["record_time"], kept
            )
    if outcome is not None:
        conn.execute(delete(steps).where(steps.c.sequence == outcome["sequence"]))
    conn.execute(
        delete(step_attempts).where(
            step_attempts.c.run_id == run_id, step_attempts.c.step_key == step_key
        )
    )
    conn.execute(
        delete(run_waits).where(
            run_waits.c.run_id == run_id,
            run_waits.c.wait_key.startswith(f"retry:{step_key}:", autoescape=True),
        )
    )


# -- fork ------------------------------------------------------------------------


class ForkStatus(enum.Enum):
    """What a fork did."""

    FORKED = "forked"
    EXISTED = "existed"  # the idempotency key made this fork before
    NOT_FOUND = "not_found"  # no such run
    NO_STEP = "no_step"  # the run has no recorded outcome with that key
    CHILD_UNFINISHED = "child_unfinished"  # a copied child has not ended
    ID_TAKEN = "id_taken"  # the new run id exists


@dataclass(frozen=True, slots=True)
class ForkOutcome:
    """The outcome, the fork (FORKED, EXISTED) and, for CHILD_UNFINISHED, the child."""

    status: ForkStatus
    run: RunRecord | None = None
    child_run_id: str = ""


def fork(
    conn: Connection, source_run_id: str, step_key: str, new: NewRun, now: int, *, actor: str = ""
) -> ForkOutcome:
    """Create the run ``new`` (its workflow and input are the caller's, usually the
    original's) with a copy of the original's journal up to and including the
    outcome of ``step_key``, linked both ways in the runs' histories."""
    if new.idempotency_key is not None:
        existing = (
            conn.execute(select(runs).where(runs.c.idempotency_key == new.idempotency_key))
            .mappings()
            .first()
        )
        if existing is not None:
            return ForkOutcome(ForkStatus.EXISTED, rows.run_from_row(existing))
    lock_run(conn, source_run_id)
    if conn.execute(select(runs.c.seq).where(runs.c.run_id == source_run_id)).first() is None:
        return ForkOutcome(ForkStatus.NOT_FOUND)
    copied = _journal_until(conn, source_run_id, step_key)
    if copied is None:
        return ForkOutcome(ForkStatus.NO_STEP)
    step_rows, attempt_rows, wait_rows = copied
    unfinished = _unfinished_child(conn, source_run_id, step_rows)
    if unfinished:
        return ForkOutcome(ForkStatus.CHILD_UNFINISHED, child_run_id=unfinished)
    last_lease = max(
        [r["lease_id"] or 0 for r in (*step_rows, *attempt_rows)]
        + [r["met_lease_id"] or 0 for r in wait_rows]
    )
    values = {
        **rows.new_run_values(new),
        "forked_from_run_id": source_run_id,
        "forked_from_step_key": step_key,
        "dispatch_count": last_lease,
        "lease_id": last_lease,
    }
    # Under a concurrency limit a fork is admitted like any new run; an
    # operator's fork is never refused: at a cancel_newest limit it waits.
    flow.apply_new(conn, values, new.priority)
    concurrency.admit_new(conn, values, refuse=False)
    insert = insert_for(conn.dialect.name)
    inserted = (
        conn.execute(insert(runs).values(values).on_conflict_do_nothing().returning(*runs.c))
        .mappings()
        .first()
    )
    if inserted is None:
        return ForkOutcome(ForkStatus.ID_TAKEN)
    fork_id = new.run_id
    for table, found in ((steps, step_rows), (step_attempts, attempt_rows)):
        if found:
            conn.execute(
                table.insert(),
                [{**_copy(r), "run_id": fork_id, "record_time": now} for r in found],
            )
    if wait_rows:
        conn.execute(run_waits.insert(), [{**_copy(r), "run_id": fork_id} for r in wait_rows])
    history.add(
        conn,
        fork_id,
        HistoryType.FORKED_FROM,
        now,
        key=step_key,
        detail=source_run_id,
        actor=actor or None,
    )
    history.add(
        conn,
        source_run_id,
        HistoryType.FORKED,
        now,
        key=step_key,
        detail=fork_id,
        actor=actor or None,
    )
    return ForkOutcome(ForkStatus.FORKED, rows.run_from_row(inserted))


def _copy(row: Any) -> dict[str, Any]:
    """A row's columns but its key, to insert as another run's."""
    return {k: v for k, v in row.items() if k != "sequence"}


_Rows = list[Any]


def _journal_until(
    conn: Connection, run_id: str, step_key: str
) -> tuple[_Rows, _Rows, _Rows] | None:
    """The run's journal rows (step outcomes, failed attempts, met waits) up to and
    including the outcome of ``step_key``, in journal order (by lease, a lease's
    steps before the waits met after it); None when that step has no outcome."""
    step_rows = list(
        conn.execute(
            select(steps).where(steps.c.run_id == run_id).order_by(steps.c.sequence)
        ).mappings()
    )
    target = next((r for r in step_rows if r["step_key"] == step_key), None)
    if target is None:
        return None
    attempt_rows = conn.execute(
        select(step_attempts)
        .where(step_attempts.c.run_id == run_id)
        .order_by(step_attempts.c.sequence)
    ).mappings()
    wait_rows = conn.execute(
        select(run_waits)
        .where(run_waits.c.run_id == run_id, run_waits.c.status == WaitStatus.MET.value)
        .order_by(run_waits.c.sequence)
    ).mappings()
    # The same order as ``waits.ordered_journal``.
    keyed: list[tuple[tuple[int, int, int, int], str, Any]] = [
        ((r["lease_id"] or 0, 0, 0, r["sequence"]), "step", r) for r in step_rows
    ]
    keyed += [
        ((r["lease_id"] or 0, 0, r["record_time"], r["sequence"]), "attempt", r)
        for r in attempt_rows
    ]
    keyed += [
        ((r["met_lease_id"] or 0, 1, r["met_time"], r["sequence"]), "wait", r) for r in wait_rows
    ]
    keyed.sort(key=lambda item: item[0])
    taken: dict[str, _Rows] = {"step": [], "attempt": [], "wait": []}
    for _, kind, row in keyed:
        taken[kind].append(row)
        if row is target:
            break
    return taken["step"], taken["attempt"], taken["wait"]


def _unfinished_child(conn: Connection, run_id: str, step_rows: _Rows) -> str:
    """The id of an unfinished child whose start is among ``step_rows``, or ""."""
    started = []
    for row in step_rows:
        if row["step_key"].startswith("child:") and row["result_json"]:
            try:
                started.append(str(json.loads(row["result_json"])["run_id"]))
            except (ValueError, KeyError, TypeError):
                continue
    if not started:
        return ""
    found = conn.execute(
        select(runs.c.run_id).where(
            runs.c.parent_run_id == run_id,
            runs.c.run_id.in_(started),
            runs.c.status.in_(_UNFINISHED),
        )
    ).first()
    return str(found.run_id) if found is not None else ""


# -- delete ------------------------------------------------------------------------


class DeleteStatus(enum.Enum):
    """What deleting a run did."""

    DELETED = "deleted"
    NOT_FOUND = "not_found"
    NOT_FINISHED = "not_finished"


def delete_run(conn: Connection, run_id: str) -> tuple[DeleteStatus, RunStatus | None]:
    """Delete a finished run and every row of it; an unfinished one is kept."""
    lock_run(conn, run_id)
    status = conn.execute(select(runs.c.status).where(runs.c.run_id == run_id)).scalar()
    if status is None:
        return DeleteStatus.NOT_FOUND, None
    if status not in _TERMINAL:
        return DeleteStatus.NOT_FINISHED, RunStatus(status)
    _delete_rows(conn, [run_id])
    return DeleteStatus.DELETED, RunStatus(status)


def delete_expired(conn: Connection, ended_before: int, limit: int) -> int:
    """Delete up to ``limit`` finished runs that ended before ``ended_before`` (oldest
    first), with every row of them; return how many."""
    found = [
        row.run_id
        for row in conn.execute(
            select(runs.c.run_id)
            .where(runs.c.end_time.is_not(None), runs.c.end_time < ended_before)
            .order_by(runs.c.end_time)
            .limit(limit)
        )
    ]
    if not found:
        return 0
    if conn.dialect.name != "sqlite":  # skip rows another transaction holds (a retry)
        found = [
            row.run_id
            for row in conn.execute(
                select(runs.c.run_id)
                .where(runs.c.run_id.in_(found), runs.c.status.in_(_TERMINAL))
                .with_for_update(skip_locked=True)
            )
        ]
    _delete_rows(conn, found)
    return len(found)


def _delete_rows(conn: Connection, run_ids: list[str]) -> None:
    """Delete every row of the runs (the caller checked, under their row locks on
    PostgreSQL, that they have finished). By run id only: a condition on the
    status would make SQLite pick the status index and scan every finished run."""
    if not run_ids:
        return
    for table in _RUN_TABLES:
        conn.execute(delete(table).where(table.c.run_id.in_(run_ids)))
    conn.execute(delete(runs).where(runs.c.run_id.in_(run_ids)))


class RunActionStoreMixin:
    """The ``Store`` methods for operator actions on runs, for ``SqlStore``."""

    _committer: Committer
    _reads: Reader
    _clock: Clock

    async def retry_run(
        self,
        run_id: str,
        move: StatusMove,
        deadline: DeadlineChange,
        *,
        reason: str = "",
        actor: str = "",
    ) -> RetryOutcome:
        """Move a finished run back to PENDING, its journal kept without the failure
        (``retry``)."""
        now = self._clock.now_ms()
        return await self._committer.submit(
            lambda conn: retry(conn, run_id, move, deadline, now, reason=reason, actor=actor)
        )

    async def fork_run(
        self, source_run_id: str, step_key: str, new: NewRun, *, actor: str = ""
    ) -> ForkOutcome:
        """Create a fork of a run from one of its steps (``fork``)."""
        now = self._clock.now_ms()
        return await self._committer.submit(
            lambda conn: fork(conn, source_run_id, step_key, new, now, actor=actor)
        )

    async def delete_run(self, run_id: str) -> tuple[DeleteStatus, RunStatus | None]:
        """Delete a finished run with every row of it."""
        return await self._committer.submit(lambda conn: delete_run(conn, run_id))

    async def delete_expired_runs(self, ended_before: int, limit: int) -> int:
        """Delete up to ``limit`` runs that ended before ``ended_before``; how many."""
        return await self._committer.submit(lambda conn: delete_expired(conn, ended_before, limit))

    async def matching_runs(
        self, run_filter: RunFilter, before_seq: int | None, limit: int
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` runs the filter selects, as (seq, run id), newest first."""
        return await self._reads.run(
            lambda conn: listing.matching_runs(conn, run_filter, before_seq, limit)
        )

    async def count_matching_runs(self, run_filter: RunFilter) -> int:
        """How many runs the filter selects."""
        return await self._reads.run(lambda conn: listing.count_matching(conn, run_filter))
