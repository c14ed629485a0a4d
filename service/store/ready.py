"""What a replica polls the database for: ready runs when it is idle, and
which of the runs its callers wait for ended.

Replicas learn about runs made ready elsewhere through notifications
(``stepd.server.store.notify``); this query is the fallback that finds what a
notification did not deliver. It locks the rows it returns ``FOR UPDATE SKIP
LOCKED`` inside its (short) transaction, so replicas polling at once, or a
replica polling while another claims, skip each other's rows instead of
waiting on them. The claim that follows is the usual conditional write.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, and_, func, or_, select

from stepd.server.domain import TERMINAL_STATUSES, RunRecord, RunStatus
from stepd.server.store import rows
from stepd.server.store.schema import runs


def ready_runs(
    conn: Connection, served: Sequence[tuple[str, str]], limit: int, now: int
) -> list[RunRecord]:
    """Up to ``limit`` PENDING runs due to start by ``now`` whose (workflow, version)
    is in ``served`` (version "" matches a run of any version), highest priority
    first, then oldest;
    rows another transaction has locked are skipped."""
    if not served or limit <= 0:
        return []
    matches = [
        runs.c.workflow_name == name
        if version == ""
        else and_(runs.c.workflow_name == name, runs.c.workflow_version.in_((version, "")))
        for name, version in sorted(set(served))
    ]
    stmt = (
        select(runs)
        .where(
            runs.c.status == RunStatus.PENDING.value,
            or_(runs.c.admitted.is_(None), runs.c.admitted == 1),
            or_(runs.c.start_time_not_before.is_(None), runs.c.start_time_not_before <= now),
            or_(*matches),
        )
        .order_by(func.coalesce(runs.c.priority, 0).desc(), runs.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [rows.run_from_row(row) for row in conn.execute(stmt).mappings()]


def ended_runs(conn: Connection, run_ids: Sequence[str]) -> list[RunRecord]:
    """Those of ``run_ids`` that reached a terminal status."""
    if not run_ids:
        return []
    stmt = select(runs).where(
        runs.c.run_id.in_(sorted(set(run_ids))),
        runs.c.status.in_([status.value for status in TERMINAL_STATUSES]),
    )
    return [rows.run_from_row(row) for row in conn.execute(stmt).mappings()]
