"""ListRuns pages bounded in bytes: payloads are read only when asked, and then
only for the runs that fit in the page.

A page first reads the matching runs without their payload columns (the
input, the result and the error's traceback) but with each one's length,
takes runs newest first while their payloads fit in ``max_bytes`` (at least
one run), and then reads the payloads of those runs alone. Memory stays near
``max_bytes`` per call however large the payloads are.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, func, literal, null, select

from stepd.server.domain import RunFilter, RunRecord
from stepd.server.store import rows
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
    if before_seq is not None:
        stmt = stmt.where(runs.c.seq < before_seq)
    return stmt


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
    empty and their error has no traceback; with them, the page stops before the
    run whose payloads would pass ``max_bytes`` (but holds at least one run)."""
    light = [c for c in runs.c if c.name not in PAYLOADS]
    sizes = [func.coalesce(func.length(runs.c[name]), 0) for name in PAYLOADS]
    stmt = select(
        *light,
        literal("").label("input_json"),
        null().label("result_json"),
        null().label("error_traceback"),
        (sizes[0] + sizes[1] + sizes[2]).label("payload_size"),
    )
    stmt = _filtered(stmt, run_filter, before_seq).order_by(runs.c.seq.desc()).limit(limit + 1)
    found = list(conn.execute(stmt).mappings())
    taken: list[Any] = []
    size = 0
    for row in found[:limit]:
        cost = RUN_BYTES + (row["payload_size"] if payloads else 0)
        if taken and size + cost > max_bytes:
            break
        taken.append(row)
        size += cost
    more = len(found) > len(taken)
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
