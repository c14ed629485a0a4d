"""Migration 4: the signal inbox, signal waits, and the run history table.

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
    text,
)

DESCRIPTION = "signals inbox, run_waits.target, run_events history"


def upgrade(conn: Connection) -> None:
    """Create signals and run_events; add run_waits.target."""
    key = BigInteger().with_variant(Integer(), "sqlite")
    md = MetaData()
    Table("runs", md, Column("run_id", Text))  # only for the foreign keys
    signals = Table(
        "signals",
        md,
        Column("sequence", key, primary_key=True, autoincrement=True),
        Column(
            "run_id",
            Text,
            ForeignKey("runs.run_id", name="fk_signals_run_id_runs"),
            nullable=False,
        ),
        Column("name", Text, nullable=False),
        Column("payload_json", Text, nullable=False),
        Column("request_id", Text),
        Column("send_time", BigInteger, nullable=False),
        Column("consumed_by", Text),
        Index("ix_signals_run_id_name_sequence", "run_id", "name", "sequence"),
        Index(
            "ux_signals_run_id_request_id",
            "run_id",
            "request_id",
            unique=True,
            sqlite_where=text("request_id IS NOT NULL"),
            postgresql_where=text("request_id IS NOT NULL"),
        ),
        sqlite_autoincrement=True,
    )
    run_events = Table(
        "run_events",
        md,
        Column("sequence", key, primary_key=True, autoincrement=True),
        Column(
            "run_id",
            Text,
            ForeignKey("runs.run_id", name="fk_run_events_run_id_runs"),
            nullable=False,
        ),
        Column("time", BigInteger, nullable=False),
        Column("type", Text, nullable=False),
        Column("key", Text),
        Column("name", Text),
        Column("payload_json", Text),
        Column("attempt", Integer),
        Column("detail", Text),
        Index("ix_run_events_run_id_sequence", "run_id", "sequence"),
        Index(
            "ux_run_events_custom_key",
            "run_id",
            "key",
            unique=True,
            sqlite_where=text("type = 'custom'"),
            postgresql_where=text("type = 'custom'"),
        ),
        sqlite_autoincrement=True,
    )
    signals.create(conn)
    run_events.create(conn)
    conn.execute(text("ALTER TABLE run_waits ADD COLUMN target TEXT"))
