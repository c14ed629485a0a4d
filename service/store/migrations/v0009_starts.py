"""Migration 9: runs started without a caller (event triggers, schedules, delayed starts).

Adds each run's schedule and occasion, an index for delayed starts coming
due, the workflows' event triggers, and the schedules with the cursor of the
occasions they have handled.

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
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

DESCRIPTION = "runs.schedule_id/schedule_time, workflow_triggers, schedules"


def upgrade(conn: Connection) -> None:
    """Add the columns and indexes on runs, and create the two tables."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN schedule_id TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN schedule_time BIGINT"))
    conn.execute(text("CREATE INDEX ix_runs_schedule_id_seq ON runs (schedule_id, seq)"))
    conn.execute(
        text(
            "CREATE INDEX ix_runs_status_start_time_not_before "
            "ON runs (status, start_time_not_before)"
        )
    )
    md = MetaData()
    workflow_triggers = Table(
        "workflow_triggers",
        md,
        Column("workflow_name", Text, nullable=False),
        Column("workflow_version", Text, nullable=False),
        Column("event_name", Text, nullable=False),
        PrimaryKeyConstraint("workflow_name", "workflow_version", "event_name"),
        Index("ix_workflow_triggers_event_name", "event_name"),
    )
    schedules = Table(
        "schedules",
        md,
        Column("schedule_id", Text, primary_key=True),
        Column("workflow_name", Text, nullable=False),
        Column("workflow_version", Text, nullable=False),
        Column("cron", Text, nullable=False),
        Column("time_zone", Text, nullable=False),
        Column("input_json", Text, nullable=False),
        Column("overlap_policy", Text, nullable=False),
        Column("catchup_policy", Text, nullable=False),
        Column("origin", Text, nullable=False),
        Column("paused", Integer, nullable=False),
        Column("create_time", BigInteger, nullable=False),
        Column("update_time", BigInteger, nullable=False),
        Column("next_time", BigInteger, nullable=False),
        Column("last_time", BigInteger),
        Column("last_run_id", Text),
        Index("ix_schedules_paused_next_time", "paused", "next_time"),
        Index("ix_schedules_workflow_name_schedule_id", "workflow_name", "schedule_id"),
    )
    workflow_triggers.create(conn)
    schedules.create(conn)
