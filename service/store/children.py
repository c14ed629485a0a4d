"""Child runs and held runs, inside the caller's write (or read) transaction.

A child run is an ordinary run with ``parent_run_id`` and ``root_run_id`` set.
``start`` creates it and the parent's journal entry for the call in one
transaction; ``deliver`` meets the parent's wait on it once it has ended.
``hold`` gives a run back as held for non-determinism.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, replace

from sqlalchemy import Connection, and_, select, update

from stepd.server.domain import (
    TERMINAL_STATUSES,
    ErrorDetails,
    HistoryType,
    NewRun,
    RunRecord,
    RunStatus,
    StepRow,
    TraceContext,
    WaitKind,
    WaitStatus,
)
from stepd.server.store import child_outcome, concurrency, flow, history, rows, waits
from stepd.server.store.dialects import insert_for, lock_run
from stepd.server.store.schema import run_waits, runs, steps

log = logging.getLogger("stepd.store.children")

_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


class StartChildStatus(enum.Enum):
    """What starting a child did."""

    STARTED = "started"  # the child and the parent's entry were created now
    RECORDED_BEFORE = "recorded_before"  # the entry existed: nothing was changed
    LEASE_LOST = "lease_lost"
    ID_TAKEN = "id_taken"  # a run that is not this parent's child has the derived id


@dataclass(frozen=True, slots=True)
class StartChildOutcome:
    """The outcome, the parent's journal entry for the call, and the child run."""

    status: StartChildStatus
    entry: StepRow | None = None
    child: RunRecord | None = None


def entry_json(child_run_id: str) -> str:
    """The result of a parent's ``child:N`` journal entry."""
    return json.dumps({"run_id": child_run_id})


def start(
    conn: Connection, parent_run_id: str, lease_id: int, child_key: str, new: NewRun, now: int
) -> StartChildOutcome:
    """Create the child (once: its id is derived from the parent and the key) and
    record the parent's journal entry ``child_key``, under the parent's lease."""
    # Mark the parent first, under its lease: the guarded UPDATE takes its row
    # lock, so an end of the parent racing this either comes first (no lease, no
    # child) or returns has_children and cancels the child.
    parent = (
        conn.execute(
            update(runs)
            .where(
                runs.c.run_id == parent_run_id,
                runs.c.status == RunStatus.RUNNING.value,
                runs.c.lease_id == lease_id,
            )
            .values(has_children=1)
            .returning(runs.c.root_run_id, runs.c.trace_parent, runs.c.trace_state)
        )
        .mappings()
        .first()
    )
    if parent is None:
        return StartChildOutcome(StartChildStatus.LEASE_LOST)
    existing = (
        conn.execute(
            select(steps).where(steps.c.run_id == parent_run_id, steps.c.step_key == child_key)
        )
        .mappings()
        .first()
    )
    if existing is not None:
        return StartChildOutcome(StartChildStatus.RECORDED_BEFORE, rows.step_from_row(existing))
    new = replace(new, root_run_id=parent["root_run_id"] or parent_run_id)
    if not new.trace and parent["trace_parent"]:  # the worker sent none: the parent's trace
        new = replace(new, trace=TraceContext(parent["trace_parent"], parent["trace_state"] or ""))
    values = rows.new_run_values(new)
    flow.apply_new(conn, values)
    refusal = concurrency.admit_new(conn, values)
    if refusal is not None:
        # Created already cancelled, so that the parent learns why.
        values = concurrency.refused_values(values, refusal, now)
        log.info("child %s of run %s not started: %s", new.run_id, parent_run_id, refusal.message())
    insert = insert_for(conn.dialect.name)
    inserted = (
        conn.execute(insert(runs).values(values).on_conflict_do_nothing().returning(*runs.c))
        .mappings()
        .first()
    )
    if inserted is None:
        found = conn.execute(select(runs).where(runs.c.run_id == new.run_id)).mappings().first()
        if found is None or found["parent_run_id"] != parent_run_id:
            return StartChildOutcome(StartChildStatus.ID_TAKEN)
        child = rows.run_from_row(found)
    else:
        child = rows.run_from_row(inserted)
    entry = StepRow(
        step_key=child_key,
        attempt=1,
        result_json=entry_json(child.run_id),
        start_time=now,
        end_time=now,
    )
    conn.execute(
        steps.insert().values(**rows.step_values(parent_run_id, entry, now), lease_id=lease_id)
    )
    history.add(
        conn, parent_run_id, HistoryType.CHILD_STARTED, now, key=child_key, detail=child.run_id
    )
    return StartChildOutcome(
        StartChildStatus.STARTED, entry, child if inserted is not None else None
    )


def deliver(conn: Connection, child: RunRecord, now: int) -> RunRecord | None:
    """Meet the parent's open wait on a child that ended; return the parent if it woke."""
    payload = child_outcome.outcome_json(child)
    if payload is None or child.parent_run_id is None:
        return None
    # The parent's row lock first: a suspension that registers this wait holds
    # it until it commits (and reads the child's status under it), so either we
    # see its wait or it sees the child ended. Without it, PostgreSQL lost the
    # wake-up of a parent suspending while its child ended.
    lock_run(conn, child.parent_run_id)
    wait_key = conn.execute(
        select(run_waits.c.wait_key).where(
            run_waits.c.kind == WaitKind.CHILD.value,
            run_waits.c.target == child.run_id,
            run_waits.c.status == WaitStatus.OPEN.value,
            run_waits.c.run_id == child.parent_run_id,
        )
    ).scalar()
    if wait_key is None:  # the parent does not wait on it now; its next suspension looks
        return None
    return waits.meet(conn, child.parent_run_id, str(wait_key), now, payload)


def unfinished_children(conn: Connection, parent_run_id: str) -> list[RunRecord]:
    """A run's children that have not ended and do not outlive it."""
    stmt = (
        select(runs)
        .where(runs.c.parent_run_id == parent_run_id, runs.c.status.not_in(_TERMINAL))
        .where(runs.c.detached.is_(None))
        .order_by(runs.c.seq)
    )
    return [rows.run_from_row(row) for row in conn.execute(stmt).mappings()]


def recovery(conn: Connection) -> tuple[list[RunRecord], list[str]]:
    """After a crash: ended children whose parent still waits on them, and ended
    runs that still have unfinished, attached children."""
    child = runs.alias("child")
    ended = conn.execute(
        select(child)
        .select_from(
            run_waits.join(
                child,
                and_(
                    child.c.run_id == run_waits.c.target,
                    child.c.parent_run_id == run_waits.c.run_id,
                ),
            )
        )
        .where(
            run_waits.c.kind == WaitKind.CHILD.value,
            run_waits.c.status == WaitStatus.OPEN.value,
            child.c.status.in_(_TERMINAL),
        )
    ).mappings()
    finished = [rows.run_from_row(row) for row in ended]
    parent = runs.alias("parent")
    orphaned = conn.execute(
        select(parent.c.run_id)
        .distinct()
        .select_from(parent.join(child, child.c.parent_run_id == parent.c.run_id))
        .where(
            parent.c.status.in_(_TERMINAL),
            child.c.status.not_in(_TERMINAL),
            child.c.detached.is_(None),
        )
    ).scalars()
    return finished, [str(run_id) for run_id in orphaned]


def hold(
    conn: Connection, run_id: str, lease_id: int, error: ErrorDetails, now: int
) -> RunRecord | None:
    """Give a RUNNING run under ``lease_id`` back as PENDING, held with ``error``;
    None when the lease is gone."""
    row = waits.leave_running(
        conn,
        run_id,
        lease_id,
        RunStatus.PENDING,
        now,
        held_error_type=error.type,
        held_error_message=error.message,
    )
    if row is None:
        return None
    history.add(conn, run_id, HistoryType.HELD, now, name=error.type, detail=error.message)
    return rows.run_from_row(row)
