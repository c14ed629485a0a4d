"""What a parent's wait on a child run delivers once the child has ended.

Used by ``children`` (a child ends while its parent waits) and by ``waits`` (a
parent suspends on a child that ended before), inside the caller's transaction.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, select

from stepd.server.domain import ErrorDetails, RunRecord, RunStatus
from stepd.server.store import rows
from stepd.server.store.schema import runs


def outcome_json(run: RunRecord) -> str | None:
    """What a parent's wait on ``run`` delivers; None while the run is unfinished."""
    base: dict[str, object] = {
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "status": run.status.value,
    }
    if run.status is RunStatus.COMPLETED:
        base["result"] = json.loads(run.result_json) if run.result_json else None
    elif run.status is RunStatus.FAILED:
        error = run.error or ErrorDetails("", "")
        base["error"] = {"type": error.type, "message": error.message}
    elif run.status is RunStatus.CANCELLED:
        base["reason"] = run.cancel_reason or ""
    else:
        return None
    return json.dumps(base)


def finished_outcome(conn: Connection, child_run_id: str) -> str | None:
    """The outcome of a child that has ended, else None."""
    row = conn.execute(select(runs).where(runs.c.run_id == child_run_id)).mappings().first()
    return None if row is None else outcome_json(rows.run_from_row(row))
