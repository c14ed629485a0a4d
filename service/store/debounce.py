"""Debounce: folding a trigger into its key's pending run, inside the
caller's write transaction.

A workflow with debounce (``DebounceSpec``) gives each run a key, read from
the trigger's input (or the trigger's explicit key). ``fold`` runs before a
new run of such a workflow is inserted: under the (workflow, key) lock
(PostgreSQL: an advisory transaction lock, so replicas cannot both create a
run; SQLite has one writer) it looks for the key's pending run whose start
time is still ahead. When there is one, the trigger is folded into it: the
run's input becomes the trigger's and its start moves to ``period`` after
now, but not past ``max_wait`` after its first trigger (its create time).
Otherwise the new run gets the key and a start time ``period`` ahead: it
waits as a delayed start does (durable, and fired by every replica's timer).
A run whose start time has come is never changed: the next trigger of its
key creates a new run.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, select, text, update

from stepd.server.domain import RunRecord, RunStatus
from stepd.server.domain_flow import DebounceSpec
from stepd.server.store import rows
from stepd.server.store.concurrency import bounded_key, key_from_input, lock_key
from stepd.server.store.schema import PENDING_ONLY, runs

_PENDING = (
    select(runs.c.run_id, runs.c.create_time)
    .where(
        runs.c.workflow_name == bindparam("p_workflow"),
        runs.c.debounce_key == bindparam("p_key"),
        text(PENDING_ONLY),  # as the partial index says it, word for word
        # "+ 0": SQLite would otherwise scan every delayed pending run through
        # the (status, start time) index instead of this key's few.
        runs.c.start_time_not_before + 0 > bindparam("p_now"),
    )
    .order_by(runs.c.seq.desc())
    .limit(1)
)


def fold(
    conn: Connection, values: dict[str, Any], spec: DebounceSpec, explicit_key: str | None
) -> RunRecord | None:
    """Fold a new run (its column values, before the insert) into its key's
    pending run and return that run; or set the new run's key and start time
    in ``values`` and return None (the caller inserts it)."""
    if explicit_key is not None:
        key = bounded_key(explicit_key)
    else:
        key = key_from_input(values["input_json"], spec.key_path)
    workflow, now = values["workflow_name"], values["create_time"]
    lock_key(conn, f"debounce:{workflow}", key)
    pending = conn.execute(_PENDING, {"p_workflow": workflow, "p_key": key, "p_now": now}).first()
    if pending is not None:
        row = (
            conn.execute(
                update(runs)
                .where(runs.c.run_id == pending.run_id, runs.c.status == RunStatus.PENDING.value)
                .values(
                    input_json=values["input_json"],
                    start_time_not_before=spec.start_time(now, pending.create_time),
                    update_time=now,
                )
                .returning(*runs.c)
            )
            .mappings()
            .first()
        )
        if row is not None:
            return rows.run_from_row(row)
    values["debounce_key"] = key
    values["start_time_not_before"] = max(
        values["start_time_not_before"] or 0, spec.start_time(now, now)
    )
    return None
