"""Migration 1: runs, steps and the workflow registry.

Frozen: this file describes the schema as it was when migration 1 shipped and
never changes. Later changes go into new migrations.
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
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

DESCRIPTION = "runs, steps, workflow_versions"


def _tables() -> MetaData:
    key = BigInteger().with_variant(Integer(), "sqlite")
    md = MetaData()
    Table(
        "runs",
        md,
        Column("seq", key, primary_key=True, autoincrement=True),
        Column("run_id", Text, nullable=False),
        Column("workflow_name", Text, nullable=False),
        Column("workflow_version", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("input_json", Text, nullable=False),
        Column("result_json", Text),
        Column("error_type", Text),
        Column("error_message", Text),
        Column("error_traceback", Text),
        Column("error_step_key", Text),
        Column("error_attempt", Integer),
        Column("failure_reason", Text),
        Column("parent_run_id", Text),
        Column("root_run_id", Text),
        Column("idempotency_key", Text),
        Column("create_time", BigInteger, nullable=False),
        Column("update_time", BigInteger, nullable=False),
        Column("start_time", BigInteger),
        Column("end_time", BigInteger),
        Column("deadline", BigInteger),
        Column("start_time_not_before", BigInteger),
        Column("dispatch_count", Integer, nullable=False),
        Column("lease_id", Integer, nullable=False),
        Column("lease_owner", Text),
        Column("lease_expires_at", BigInteger),
        Column("cancel_reason", Text),
        PrimaryKeyConstraint("seq", name="pk_runs"),
        UniqueConstraint("run_id", name="uq_runs_run_id"),
        Index("ix_runs_status_seq", "status", "seq"),
        Index("ix_runs_workflow_name_seq", "workflow_name", "seq"),
        Index("ix_runs_parent_run_id_seq", "parent_run_id", "seq"),
        Index(
            "ux_runs_idempotency_key",
            "idempotency_key",
            unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"),
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        sqlite_autoincrement=True,
    )
    Table(
        "steps",
        md,
        Column("sequence", key, primary_key=True, autoincrement=True),
        Column(
            "run_id",
            Text,
            ForeignKey("runs.run_id", name="fk_steps_run_id_runs"),
            nullable=False,
        ),
        Column("step_key", Text, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("result_json", Text),
        Column("error_type", Text),
        Column("error_message", Text),
        Column("error_traceback", Text),
        Column("error_step_key", Text),
        Column("error_attempt", Integer),
        Column("start_time", BigInteger),
        Column("end_time", BigInteger),
        Column("record_time", BigInteger, nullable=False),
        PrimaryKeyConstraint("sequence", name="pk_steps"),
        UniqueConstraint("run_id", "step_key", name="uq_steps_run_id_step_key"),
        Index("ix_steps_run_id_sequence", "run_id", "sequence"),
        sqlite_autoincrement=True,
    )
    Table(
        "workflow_versions",
        md,
        Column("name", Text, nullable=False),
        Column("version", Text, nullable=False),
        Column("first_seen", BigInteger, nullable=False),
        PrimaryKeyConstraint("name", "version", name="pk_workflow_versions"),
    )
    return md


def upgrade(conn: Connection) -> None:
    """Create the version-1 tables and indexes."""
    _tables().create_all(conn, checkfirst=False)
