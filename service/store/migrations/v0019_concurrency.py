"""Migration 19: concurrency per key.

- ``concurrency_limits``: the limit each workflow declared (name, key path,
  most active runs per key, strategy).
- ``runs.concurrency_name``, ``runs.concurrency_key``, ``runs.admitted``: the
  limit and key a run counts against, and whether it was admitted (1) or waits
  (0); all NULL for a run without a limit.
- ``ix_runs_concurrency``: a key's runs in order, over limited runs only.

(Numbers 14 to 18 are taken by other changes; migrations apply by number.)

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, Integer, MetaData, Table, Text, text

DESCRIPTION = "concurrency_limits; runs.concurrency_name, concurrency_key, admitted"


def upgrade(conn: Connection) -> None:
    """Create the table, add the three columns and the index."""
    md = MetaData()
    limits = Table(
        "concurrency_limits",
        md,
        Column("workflow_name", Text, primary_key=True),
        Column("limit_name", Text, nullable=False),
        Column("key_path", Text, nullable=False),
        Column("max_active", Integer, nullable=False),
        Column("strategy", Text, nullable=False),
        Column("update_time", BigInteger, nullable=False),
        Index("ix_concurrency_limits_limit_name", "limit_name"),
    )
    limits.create(conn)
    conn.execute(text("ALTER TABLE runs ADD COLUMN concurrency_name TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN concurrency_key TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN admitted INTEGER"))
    conn.execute(
        text(
            "CREATE INDEX ix_runs_concurrency ON runs "
            "(concurrency_name, concurrency_key, admitted, seq) "
            "WHERE concurrency_name IS NOT NULL"
        )
    )
