"""ListRuns pages bounded in bytes: payloads are read only when asked, and then
only for the runs that fit in the page.

A page first reads the matching runs without their payload columns (the
input, the result and the error's traceback), with each one's length in
bytes when payloads are asked for, takes runs newest first while they fit in
``max_bytes`` (at least one run), and then reads the payloads of those runs
alone. Memory stays near ``max_bytes`` per call however large the payloads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, func, literal, null, select

from stepd.server.domain import RunFilter, RunRecord
from stepd.server.store import rows
from stepd.server.store.dialects import byte_length
from stepd.server.store.schema import runs

#: The payload columns of a run, left out of listings unless asked for.
PAYLOADS = ("input_json", "result_json", "error_traceback")
#: What a run costs in a page besides its payloads (bytes, about).
RUN_BYTES = 300


def _filtered(stmt: Select[Any], run_filter: RunFilter, before_seq: int | None) -> Select[Any]:
    if run_filter.workflow_name is not None:
        stmt = stmt.where(runs.c.workflow_name == run_filter.workflow_name)
    if run_filter.statuses is not None:
        stmt = stmt.where(runs.c.status.in_(sorted(s.value for s in run_filter.statuses)))
    if run_filter.parent_run_id is not None:
        stmt = stmt.where(runs.c.parent_run_id == run_filter.parent_run_id)
    if run_filter.create_time_after is not None:
        stmt = stmt.where(runs.c.create_time >= run_filter.create_time_after)
    if run_filter.create_time_before is not None:
        stmt = stmt.where(runs.c.create_time < run_filter.create_time_before)
    if run_filter.idempotency_key is not None:
        stmt = stmt.where(runs.c.idempotency_key == run_filter.idempotency_key)
    if run_filter.schedule_id is not None:
        stmt = stmt.where(runs.c.schedule_id == run_filter.schedule_id)
    if before_seq is not None:
        stmt = stmt.where(runs.c.seq < before_seq)
    return stmt


#: Rows read per query while a page fills: the first few, then more and more.
FIRST_CHUNK = 4


def _cost(row: Any, payloads: bool) -> int:
    """What a run costs in a page: its payloads when included, and its texts."""
    texts = (
        row["error_message"],
        row["held_error_message"],
        row["cancel_reason"],
        row["progress_json"],
    )
    cost = RUN_BYTES + sum(len(t) for t in texts if t)
    return cost + (row["payload_size"] if payloads else 0)


def read_page(
    conn: Connection,
    run_filter: RunFilter,
    limit: int,
    before_seq: int | None,
    payloads: bool,
    max_bytes: int,
) -> tuple[list[RunRecord], bool]:
    """Up to ``limit`` matching runs, newest first, with seq < ``before_seq``, and
    whether more follow. Without ``payloads`` the runs' input and result are
    empty and their error has no traceback. The page stops before the run that
    would take it past ``max_bytes`` (but holds at least one run).

    Runs are read in growing chunks (4, 16, 64, ... rows) until the page is
    full, so a page of large runs measures the payloads of a few rows beyond
    it, not of ``limit`` rows."""
    columns: list[Any] = [c for c in runs.c if c.name not in PAYLOADS]
    columns += [
        literal("").label("input_json"),
        null().label("result_json"),
        null().label("error_traceback"),
    ]
    if payloads:
        sizes = [byte_length(conn.dialect.name, runs.c[name]) for name in PAYLOADS]
        columns.append((sizes[0] + sizes[1] + sizes[2]).label("payload_size"))
    taken: list[Any] = []
    size, more, after, chunk = 0, False, before_seq, FIRST_CHUNK
    while not more:
        wanted = min(chunk, limit - len(taken) + 1)
        stmt = _filtered(select(*columns), run_filter, after).order_by(runs.c.seq.desc())
        found = list(conn.execute(stmt.limit(wanted)).mappings())
        for row in found:
            cost = _cost(row, payloads)
            if len(taken) == limit or (taken and size + cost > max_bytes):
                more = True
                break
            taken.append(row)
            size += cost
        if len(found) < wanted:
            break
        after, chunk = found[-1]["seq"], chunk * 4
    if not payloads or not taken:
        return [rows.run_from_row(row) for row in taken], more
    full = {
        row["seq"]: row
        for row in conn.execute(
            select(runs.c.seq, *(runs.c[name] for name in PAYLOADS)).where(
                runs.c.seq.in_([row["seq"] for row in taken])
            )
        ).mappings()
    }
    return [rows.run_from_row({**row, **full.get(row["seq"], {})}) for row in taken], more


def matching_runs(
    conn: Connection, run_filter: RunFilter, before_seq: int | None, limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` matching runs as (seq, run id), newest first, with seq <
    ``before_seq``: the batches of a bulk action."""
    stmt = _filtered(select(runs.c.seq, runs.c.run_id), run_filter, before_seq)
    found = conn.execute(stmt.order_by(runs.c.seq.desc()).limit(limit))
    return [(row.seq, row.run_id) for row in found]


def count_matching(conn: Connection, run_filter: RunFilter) -> int:
    """How many runs match: a bulk action's dry run."""
    stmt = _filtered(select(func.count()).select_from(runs), run_filter, None)
    return int(conn.execute(stmt).scalar() or 0)
