"""Migration 3: the waits of suspended runs (timers first).

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

DESCRIPTION = "run_waits: what suspended runs wait for, and what was met"


def upgrade(conn: Connection) -> None:
    """Create the run_waits table and its indexes."""
    md = MetaData()
    Table("runs", md, Column("run_id", Text))  # only for the foreign key
    run_waits = Table(
        "run_waits",
        md,
        Column(
            "sequence",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column(
            "run_id",
            Text,
            ForeignKey("runs.run_id", name="fk_run_waits_run_id_runs"),
            nullable=False,
        ),
        Column("wait_key", Text, nullable=False),
        Column("kind", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("fire_time", BigInteger),
        Column("create_time", BigInteger, nullable=False),
        Column("met_time", BigInteger),
        Column("payload_json", Text),
        Column("timed_out", Integer, nullable=False),
        UniqueConstraint("run_id", "wait_key", name="uq_run_waits_run_id_wait_key"),
        Index("ix_run_waits_status_fire_time", "status", "fire_time"),
        sqlite_autoincrement=True,
    )
    run_waits.create(conn)
