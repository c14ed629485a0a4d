"""A run's history: entries appended in write transactions, read back merged.

Entries that another table already holds are not stored twice: the trigger
comes from ``runs.create_time``, step outcomes from ``steps`` (failed attempts
that were retried from ``step_attempts``) and the run's end
(completed or failed) from ``runs``. Everything else — dispatches,
suspensions, met waits, signals, releases, cancellations and custom entries —
is a row of ``run_events``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Table, literal, select, text

from stepd.server.domain import (
    ErrorDetails,
    HistoryCursor,
    HistoryEntry,
    HistoryPage,
    HistoryType,
    RunStatus,
)
from stepd.server.store import rows
from stepd.server.store.dialects import byte_length, insert_for
from stepd.server.store.direct import Direct
from stepd.server.store.schema import run_events, runs, step_attempts, steps

#: At equal times (the clock has millisecond steps), entries sort in the order
#: in which one causes the next.
_CAUSAL_ORDER = {
    t: i
    for i, t in enumerate(
        (
            HistoryType.TRIGGERED,
            HistoryType.FORKED_FROM,
            HistoryType.RETRIED,
            HistoryType.DISPATCHED,
            HistoryType.STEP_COMPLETED,
            HistoryType.STEP_FAILED,
            HistoryType.CHILD_STARTED,
            HistoryType.CUSTOM,
            HistoryType.PROGRESS,
            HistoryType.SUSPENDED,
            HistoryType.SIGNAL_RECEIVED,
            HistoryType.WAIT_MET,
            HistoryType.HELD,
            HistoryType.RELEASED,
            HistoryType.CANCELLED,
            HistoryType.COMPLETED,
            HistoryType.FAILED,
            HistoryType.FORKED,
        )
    )
}


#: Failures a retry moved out of the run's row and journal into ``run_events``
#: (``add_kept_failure``): the error's type is stored as name, its message as detail.
_KEPT_FAILURES = frozenset({HistoryType.FAILED, HistoryType.STEP_FAILED})
#: The detail of a failure kept in the history by a retry.
KEPT_DETAIL = "kept in the history when the run was retried"


def add_kept_failure(
    conn: Connection, run_id: str, type_: HistoryType, time: int, error: ErrorDetails
) -> None:
    """Keep a failure that a retry takes out of the run's row or journal (a FAILED or
    STEP_FAILED entry) as a ``run_events`` row, at the time it happened."""
    add(
        conn,
        run_id,
        type_,
        time,
        key=error.step_key or None,
        name=error.type,
        detail=error.message,
        attempt=error.attempt or None,
    )


#: The optional columns of an entry, bound as NULL when not given: every entry
#: is inserted by the one statement below, compiled once (building an insert
#: with ``values()`` per entry cost more than executing it).
_OPTIONAL = ("key", "name", "payload_json", "attempt", "detail", "actor")
_INSERT_ENTRY = Direct(run_events.insert())


def add(conn: Connection, run_id: str, type_: HistoryType, time: int, **columns: Any) -> None:
    """Append one entry (key, name, payload_json, attempt, detail, actor) to a run's history."""
    unknown = columns.keys() - set(_OPTIONAL)
    if unknown:
        raise TypeError(f"run_events has no column {sorted(unknown)[0]!r}")
    params = {name: columns.get(name) for name in _OPTIONAL}
    params.update(run_id=run_id, time=time, type=type_.value)
    _INSERT_ENTRY.execute(conn, params)


def add_custom(
    conn: Connection,
    run_id: str,
    key: str,
    name: str,
    payload: str,
    time: int,
    kind: HistoryType = HistoryType.CUSTOM,
) -> bool:
    """Append a custom (or progress) entry once per key (a second write with the
    key is ignored); True when the entry is new."""
    if kind not in (HistoryType.CUSTOM, HistoryType.PROGRESS):
        raise ValueError(f"not a custom entry: {kind}")
    insert = insert_for(conn.dialect.name)
    result = conn.execute(
        insert(run_events)
        .values(
            run_id=run_id,
            time=time,
            type=kind.value,
            key=key,
            name=name,
            payload_json=payload,
        )
        .on_conflict_do_nothing(
            index_elements=["run_id", "key"],
            # A literal, not a bound parameter: PostgreSQL must match it to the
            # partial index's predicate even in a generic (prepared) plan.
            index_where=text(f"type = '{kind.value}'"),
        )
    )
    return bool(result.rowcount)


#: The columns that hold payloads: read only for the entries a page returns.
_PAYLOADS: dict[str, tuple[str, ...]] = {
    "run_events": ("payload_json",),
    "steps": ("result_json", "error_traceback"),
    "step_attempts": ("error_traceback",),
}
#: What an entry costs in a page besides its payloads (bytes, about).
_ENTRY_BYTES = 100


@dataclass(slots=True)
class _Item:
    """One history entry met by the merge, its payloads not read yet."""

    sort_key: tuple[int, int, bool, int]
    source: str  # a table name, or "run" for the entries read from the run's row
    sequence: int
    entry: HistoryEntry
    size: int


def _light(conn: Connection, table: Table) -> list[Any]:
    """The table's columns without its payloads, and each payload's length."""
    big = _PAYLOADS[table.name]
    columns: list[Any] = [c for c in table.c if c.name not in big]
    columns += [byte_length(conn.dialect.name, table.c[n]).label(f"{n}_size") for n in big]
    return columns


#: Rows read per query as the merge consumes a table: a few, then more and more.
_FIRST_CHUNK = 4
_MAX_CHUNK = 1024


def _lazily(read: Callable[[int, int], list[_Item]], after: int) -> Iterator[_Item]:
    """A table's entries after ``after``, read in growing chunks as they are taken."""
    chunk = _FIRST_CHUNK
    while True:
        items = read(after, chunk)
        yield from items
        if len(items) < chunk:
            return
        after, chunk = items[-1].sequence, min(chunk * 4, _MAX_CHUNK)


def _item(source: str, sequence: int, entry: HistoryEntry, row: Any) -> _Item:
    size = _ENTRY_BYTES + len(entry.key) + len(entry.name) + len(entry.detail)
    size += sum(row[f"{n}_size"] for n in _PAYLOADS[source])
    if entry.error is not None:
        size += len(entry.error.message) + len(entry.error.type)
    # Entries of one millisecond go in causal order; among those of one kind, a
    # step's failed attempts (their own table, numbered apart) before outcomes,
    # then each table's own order.
    order = (entry.time, _CAUSAL_ORDER[entry.type], not entry.attempt_only, sequence)
    return _Item(order, source, sequence, entry, size)


def _events(conn: Connection, run_id: str, after: int, limit: int) -> list[_Item]:
    items = []
    for row in conn.execute(
        select(*_light(conn, run_events))
        .where(run_events.c.run_id == run_id, run_events.c.sequence > after)
        .order_by(run_events.c.sequence)
        .limit(limit)
    ).mappings():
        entry = HistoryEntry(
            time=row["time"],
            type=HistoryType(row["type"]),
            key=row["key"] or "",
            name=row["name"] or "",
            attempt=row["attempt"] or 0,
            detail=row["detail"] or "",
            actor=row["actor"] or "",
        )
        if entry.type is HistoryType.HELD:  # stored as name (error type) and detail
            entry = replace(entry, error=ErrorDetails(entry.name, entry.detail), name="")
        elif entry.type in _KEPT_FAILURES:  # moved here by a retry: the same columns
            error = ErrorDetails(entry.name, entry.detail, "", entry.key, entry.attempt)
            entry = replace(entry, error=error, name="", detail=KEPT_DETAIL)
        items.append(_item("run_events", row["sequence"], entry, row))
    return items


def _steps(conn: Connection, run_id: str, after: int, limit: int) -> list[_Item]:
    items = []
    for row in conn.execute(
        select(*_light(conn, steps))
        .where(steps.c.run_id == run_id, steps.c.sequence > after)
        .order_by(steps.c.sequence)
        .limit(limit)
    ).mappings():
        error = rows.error_from_row({**row, "error_traceback": None})
        entry = HistoryEntry(
            time=row["record_time"],
            type=HistoryType.STEP_FAILED if error is not None else HistoryType.STEP_COMPLETED,
            key=row["step_key"],
            error=error,
            attempt=row["attempt"],
            step_start_time=row["start_time"],
            step_end_time=row["end_time"],
        )
        items.append(_item("steps", row["sequence"], entry, row))
    return items


def _attempts(conn: Connection, run_id: str, after: int, limit: int) -> list[_Item]:
    items = []
    for row in conn.execute(
        select(*_light(conn, step_attempts))
        .where(step_attempts.c.run_id == run_id, step_attempts.c.sequence > after)
        .order_by(step_attempts.c.sequence)
        .limit(limit)
    ).mappings():
        entry = HistoryEntry(
            time=row["record_time"],
            type=HistoryType.STEP_FAILED,
            key=row["step_key"],
            error=rows.error_from_row({**row, "error_traceback": None}),
            attempt=row["attempt"],
            detail="attempt failed; the step goes on under its retry policy",
            attempt_only=True,
            step_start_time=row["start_time"],
            step_end_time=row["end_time"],
        )
        items.append(_item("step_attempts", row["sequence"], entry, row))
    return items


def _from_run(conn: Connection, run_id: str, cursor: HistoryCursor) -> list[_Item] | None:
    """The entries read from the run's row: TRIGGERED, and COMPLETED or FAILED
    once it ended (payloads not read yet); None for an unknown run."""
    row = (
        conn.execute(
            select(
                runs.c.status,
                runs.c.create_time,
                runs.c.end_time,
                runs.c.error_type,
                runs.c.error_message,
                runs.c.error_step_key,
                runs.c.error_attempt,
                byte_length(conn.dialect.name, runs.c.result_json).label("result_size"),
                byte_length(conn.dialect.name, runs.c.error_traceback).label("traceback_size"),
            ).where(runs.c.run_id == run_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    items = []
    if not cursor.triggered:
        entry = HistoryEntry(row["create_time"], HistoryType.TRIGGERED)
        items.append(_Item((entry.time, 0, True, 0), "run", 0, entry, _ENTRY_BYTES))
    status = RunStatus(row["status"])
    if (
        not cursor.ended
        and status in (RunStatus.COMPLETED, RunStatus.FAILED)
        and row["end_time"] is not None
    ):
        completed = status is RunStatus.COMPLETED
        error = None if completed else rows.error_from_row({**row, "error_traceback": None})
        entry = HistoryEntry(
            time=row["end_time"],
            type=HistoryType.COMPLETED if completed else HistoryType.FAILED,
            error=error,
        )
        size = _ENTRY_BYTES + row["result_size"] + row["traceback_size"]
        items.append(_Item((entry.time, _CAUSAL_ORDER[entry.type], True, 0), "run", 1, entry, size))
    return items


def _with_payloads(conn: Connection, run_id: str, items: list[_Item]) -> list[HistoryEntry]:
    """The entries of ``items`` with their payloads read (one query per table)."""
    wanted: dict[str, list[int]] = {}
    for item in items:
        wanted.setdefault(item.source, []).append(item.sequence)
    found: dict[tuple[str, int], Any] = {}
    for source, sequences in wanted.items():
        if source == "run" and 1 not in sequences:
            continue  # the TRIGGERED entry has no payload
        if source == "run":
            stmt = select(
                literal(1).label("sequence"), runs.c.result_json, runs.c.error_traceback
            ).where(runs.c.run_id == run_id)
        else:
            table = _TABLES[source]
            columns = [table.c[n] for n in _PAYLOADS[source]]
            stmt = select(table.c.sequence, *columns).where(table.c.sequence.in_(sequences))
        for payloads in conn.execute(stmt).mappings():
            found[(source, payloads["sequence"])] = payloads
    entries = []
    for item in items:
        row = found.get((item.source, item.sequence))
        entries.append(item.entry if row is None else _filled(item.source, item.entry, row))
    return entries


def _filled(source: str, entry: HistoryEntry, row: Any) -> HistoryEntry:
    """An entry with the payload and error traceback of its row."""
    if source == "run_events":
        return replace(entry, payload_json=row["payload_json"])
    if entry.type in (HistoryType.STEP_COMPLETED, HistoryType.COMPLETED):
        return replace(entry, payload_json=row["result_json"])
    if entry.error is not None:
        traceback = row["error_traceback"] or ""
        return replace(entry, error=replace(entry.error, traceback=traceback))
    return entry


_TABLES = {"run_events": run_events, "steps": steps, "step_attempts": step_attempts}


def read_page(
    conn: Connection, run_id: str, cursor: HistoryCursor, limit: int, max_bytes: int
) -> HistoryPage | None:
    """Up to ``limit`` entries of a run's history after ``cursor`` (and fewer when
    their payloads pass ``max_bytes``; at least one); None for an unknown run.

    The history is merged from the run's row and three tables, each read in
    its own order (``sequence``) from where the cursor left it, by an index on
    (run_id, sequence), in growing chunks as the merge takes entries: a page
    never reads the entries before it, and only a few after it. Entries sort
    by time, then by the order in which one causes the next, then by
    sequence.
    """
    from_run = _from_run(conn, run_id, cursor)
    if from_run is None:
        return None
    streams: list[Iterable[_Item]] = [
        from_run,
        _lazily(lambda after, n: _events(conn, run_id, after, n), cursor.events),
        _lazily(lambda after, n: _steps(conn, run_id, after, n), cursor.steps),
        _lazily(lambda after, n: _attempts(conn, run_id, after, n), cursor.attempts),
    ]
    taken: list[_Item] = []
    size = 0
    merged = heapq.merge(*streams, key=lambda item: item.sort_key)
    more = False
    for item in merged:
        if len(taken) == limit or (taken and size + item.size > max_bytes):
            more = True
            break
        taken.append(item)
        size += item.size
    last = {source: 0 for source in _TABLES}
    for item in taken:
        if item.source in last:
            last[item.source] = item.sequence
    after = HistoryCursor(
        position=cursor.position + len(taken),
        events=last["run_events"] or cursor.events,
        steps=last["steps"] or cursor.steps,
        attempts=last["step_attempts"] or cursor.attempts,
        triggered=cursor.triggered or any(i.source == "run" and i.sequence == 0 for i in taken),
        ended=cursor.ended or any(i.source == "run" and i.sequence == 1 for i in taken),
    )
    return HistoryPage(_with_payloads(conn, run_id, taken), after, more)


def read(conn: Connection, run_id: str) -> list[HistoryEntry] | None:
    """The whole history of a run, oldest first; None for an unknown run."""
    entries: list[HistoryEntry] = []
    cursor = HistoryCursor()
    while True:
        page = read_page(conn, run_id, cursor, 1000, 64 * 1024 * 1024)
        if page is None:
            return None
        entries += page.entries
        if not page.more:
            return entries
        cursor = page.cursor
