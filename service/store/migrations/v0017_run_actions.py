"""Migration 17: retry, fork, retention and the list of connected workers.

- ``runs.forked_from_run_id``, ``runs.forked_from_step_key``: the run (and its
  step) a run made by ``ForkRun`` was forked from.
- ``runs.retry_count``: how many times ``RetryRun`` resumed the run (NULL: 0).
- ``ix_runs_end_time``: ended runs by end time, for retention (only rows with
  an end time: unfinished runs cost no index entry).
- ``ix_hooks_run_id``: a deleted run's hook executions.
- ``connected_workers``: each replica's worker streams, written by the replica
  that holds them every few seconds, so any replica can list every worker.

(Numbers 14 to 16 are taken by other changes; migrations apply by number.)

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, Integer, MetaData, Table, Text, text

DESCRIPTION = "runs fork and retry columns, ix_runs_end_time, connected_workers"


def upgrade(conn: Connection) -> None:
    """Add the three columns, the index and the table."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN forked_from_run_id TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN forked_from_step_key TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN retry_count INTEGER"))
    conn.execute(
        text("CREATE INDEX ix_runs_end_time ON runs (end_time) WHERE end_time IS NOT NULL")
    )
    conn.execute(text("CREATE INDEX ix_hooks_run_id ON hooks (run_id)"))
    md = MetaData()
    workers = Table(
        "connected_workers",
        md,
        Column("session_id", Text, primary_key=True),
        Column("replica_id", Text, nullable=False),
        Column("worker_id", Text, nullable=False),
        Column("identity", Text, nullable=False),
        Column("workflows", Text, nullable=False),
        Column("capacity", Integer, nullable=False),
        Column("runs_held", Integer, nullable=False),
        Column("draining", Integer, nullable=False),
        Column("connect_time", BigInteger, nullable=False),
        Column("last_seen", BigInteger, nullable=False),
        Column("update_time", BigInteger, nullable=False),
        Index("ix_connected_workers_update_time", "update_time"),
    )
    workers.create(conn)
