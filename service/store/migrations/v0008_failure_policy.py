"""Migration 8: failed step attempts, and when a run expires.

``step_attempts`` keeps each failed attempt that is not a step's outcome (it
was retried, or the server ended it at its timeout), once per (run, step key,
attempt). ``runs.execution_deadline`` is the run's start plus its workflow's
execution timeout; ``runs.expire_time`` is the earlier of that and the run's
deadline, indexed over unfinished runs only, so the timer refill finds the
runs due to expire without touching finished ones.

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
    text,
)

DESCRIPTION = "step_attempts, runs.execution_deadline and runs.expire_time"

UNFINISHED = "status IN ('pending', 'running', 'suspended')"


def upgrade(conn: Connection) -> None:
    """Create step_attempts; add and index the two run columns."""
    md = MetaData()
    runs = Table("runs", md, Column("run_id", Text), Column("expire_time", BigInteger))
    step_attempts = Table(
        "step_attempts",
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
            ForeignKey("runs.run_id", name="fk_step_attempts_run_id_runs"),
            nullable=False,
        ),
        Column("step_key", Text, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("error_type", Text),
        Column("error_message", Text),
        Column("error_traceback", Text),
        Column("error_step_key", Text),
        Column("error_attempt", Integer),
        Column("start_time", BigInteger),
        Column("end_time", BigInteger),
        Column("record_time", BigInteger, nullable=False),
        Column("lease_id", BigInteger),
        UniqueConstraint(
            "run_id", "step_key", "attempt", name="uq_step_attempts_run_id_step_key_attempt"
        ),
        sqlite_autoincrement=True,
    )
    step_attempts.create(conn)
    conn.execute(text("ALTER TABLE runs ADD COLUMN execution_deadline BIGINT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN expire_time BIGINT"))
    conn.execute(text(f"UPDATE runs SET expire_time = deadline WHERE {UNFINISHED}"))
    Index(
        "ix_runs_expire_time",
        runs.c.expire_time,
        sqlite_where=text(UNFINISHED),
        postgresql_where=text(UNFINISHED),
    ).create(conn)
