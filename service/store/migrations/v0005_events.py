"""Migration 5: published events, and what an event wait matches.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)

DESCRIPTION = "events table; run_waits.match_json and since_time; index for event waits"


def upgrade(conn: Connection) -> None:
    """Create events; add the event-wait columns and their index."""
    md = MetaData()
    events = Table(
        "events",
        md,
        Column(
            "sequence",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("event_id", Text, nullable=False),
        Column("name", Text, nullable=False),
        Column("payload_json", Text, nullable=False),
        Column("publish_time", BigInteger, nullable=False),
        Index("ux_events_event_id", "event_id", unique=True),
        Index("ix_events_name_publish_time", "name", "publish_time"),
        sqlite_autoincrement=True,
    )
    events.create(conn)
    conn.execute(text("ALTER TABLE run_waits ADD COLUMN match_json TEXT"))
    conn.execute(text("ALTER TABLE run_waits ADD COLUMN since_time BIGINT"))
    conn.execute(
        text("CREATE INDEX ix_run_waits_kind_target_status ON run_waits (kind, target, status)")
    )
