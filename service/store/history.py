"""A run's history: entries appended in write transactions, read back merged.

Entries that another table already holds are not stored twice: the trigger
comes from ``runs.create_time``, step outcomes from ``steps`` (failed attempts
that were retried from ``step_attempts``) and the run's end
(completed or failed) from ``runs``. Everything else — dispatches,
suspensions, met waits, signals, releases, cancellations and custom entries —
is a row of ``run_events``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, select, text

from stepd.server.domain import ErrorDetails, HistoryEntry, HistoryType, RunStatus
from stepd.server.store import rows
from stepd.server.store.dialects import insert_for
from stepd.server.store.schema import run_events, runs, step_attempts, steps

#: At equal times (the clock has millisecond steps), entries sort in the order
#: in which one causes the next.
_CAUSAL_ORDER = {
    t: i
    for i, t in enumerate(
        (
            HistoryType.TRIGGERED,
            HistoryType.DISPATCHED,
            HistoryType.STEP_COMPLETED,
            HistoryType.STEP_FAILED,
            HistoryType.CHILD_STARTED,
            HistoryType.CUSTOM,
            HistoryType.SUSPENDED,
            HistoryType.SIGNAL_RECEIVED,
            HistoryType.WAIT_MET,
            HistoryType.HELD,
            HistoryType.RELEASED,
            HistoryType.CANCELLED,
            HistoryType.COMPLETED,
            HistoryType.FAILED,
        )
    )
}


def add(conn: Connection, run_id: str, type_: HistoryType, time: int, **columns: Any) -> None:
    """Append one entry (key, name, payload_json, attempt, detail) to a run's history."""
    conn.execute(run_events.insert().values(run_id=run_id, time=time, type=type_.value, **columns))


def add_custom(conn: Connection, run_id: str, key: str, name: str, payload: str, time: int) -> None:
    """Append a custom entry once per key (a second write with the key is ignored)."""
    insert = insert_for(conn.dialect.name)
    conn.execute(
        insert(run_events)
        .values(
            run_id=run_id,
            time=time,
            type=HistoryType.CUSTOM.value,
            key=key,
            name=name,
            payload_json=payload,
        )
        .on_conflict_do_nothing(
            index_elements=["run_id", "key"],
            # A literal, not a bound parameter: PostgreSQL must match it to the
            # partial index's predicate even in a generic (prepared) plan.
            index_where=text(f"type = '{HistoryType.CUSTOM.value}'"),
        )
    )


def read(conn: Connection, run_id: str) -> list[HistoryEntry] | None:
    """The whole history of a run, oldest first; None for an unknown run."""
    run_row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if run_row is None:
        return None
    run = rows.run_from_row(run_row)
    # (time, table sequence, entry), sorted by time, then causal order, then sequence.
    merged: list[tuple[int, int, HistoryEntry]] = [
        (run.create_time, 0, HistoryEntry(run.create_time, HistoryType.TRIGGERED))
    ]
    for row in conn.execute(
        select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.sequence)
    ).mappings():
        entry = HistoryEntry(
            time=row["time"],
            type=HistoryType(row["type"]),
            key=row["key"] or "",
            name=row["name"] or "",
            payload_json=row["payload_json"],
            attempt=row["attempt"] or 0,
            detail=row["detail"] or "",
            actor=row["actor"] or "",
        )
        if entry.type is HistoryType.HELD:  # stored as name (error type) and detail
            entry = replace(entry, error=ErrorDetails(entry.name, entry.detail), name="")
        merged.append((entry.time, row["sequence"], entry))
    for row in conn.execute(
        select(steps).where(steps.c.run_id == run_id).order_by(steps.c.sequence)
    ).mappings():
        step = rows.step_from_row(row)
        failed = step.error is not None
        entry = HistoryEntry(
            time=row["record_time"],
            type=HistoryType.STEP_FAILED if failed else HistoryType.STEP_COMPLETED,
            key=step.step_key,
            payload_json=None if failed else step.result_json,
            error=step.error,
            attempt=step.attempt,
        )
        merged.append((entry.time, row["sequence"], entry))
    for row in conn.execute(
        select(step_attempts)
        .where(step_attempts.c.run_id == run_id)
        .order_by(step_attempts.c.sequence)
    ).mappings():
        attempt = rows.attempt_from_row(row)
        entry = HistoryEntry(
            time=row["record_time"],
            type=HistoryType.STEP_FAILED,
            key=attempt.step_key,
            error=attempt.error,
            attempt=attempt.attempt,
            detail="attempt failed; the step goes on under its retry policy",
        )
        merged.append((entry.time, row["sequence"], entry))
    if run.status in (RunStatus.COMPLETED, RunStatus.FAILED) and run.end_time is not None:
        completed = run.status is RunStatus.COMPLETED
        entry = HistoryEntry(
            time=run.end_time,
            type=HistoryType.COMPLETED if completed else HistoryType.FAILED,
            payload_json=run.result_json if completed else None,
            error=run.error,
        )
        merged.append((entry.time, 0, entry))
    merged.sort(key=lambda item: (item[0], _CAUSAL_ORDER[item[2].type], item[1]))
    return [entry for *_, entry in merged]
