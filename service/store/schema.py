"""The current database schema as SQLAlchemy Core tables, for SQLite and PostgreSQL.

This module describes the schema the newest migration produces; it is what the
store's queries are written against. It never creates anything: databases are
built and upgraded by ``stepd.server.store.migrations`` only, and a test checks that
the migrations produce exactly these tables. Change both together.

Conventions: times are ``BigInteger`` epoch milliseconds; strings are ``Text``;
statuses and reasons are stored as their lower-case enum values; autoincrement
keys are ``BIGINT`` on PostgreSQL and ``INTEGER`` (the rowid) on SQLite.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
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

#: Portable autoincrement key type: BIGINT on PostgreSQL, the rowid on SQLite.
AutoIncrementKey = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: The statuses a run can still leave (partial indexes cover only these).
UNFINISHED = "status IN ('pending', 'running', 'suspended')"
#: A pending run, as partial indexes write it (a query repeats it word for word).
PENDING_ONLY = "status = 'pending'"

runs = Table(
    "runs",
    metadata,
    Column("seq", AutoIncrementKey, primary_key=True, autoincrement=True),
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
    # Migration 8: the start plus the execution timeout; the earlier of that and
    # the deadline (indexed over unfinished runs: the expiry timers).
    Column("execution_deadline", BigInteger),
    Column("expire_time", BigInteger),
    # Migration 9: the schedule that started the run, and for which occasion.
    Column("schedule_id", Text),
    Column("schedule_time", BigInteger),
    # Migration 10: a child run that outlives its parent (1; NULL otherwise), and
    # the non-determinism error of a run held until a worker with matching code
    # takes it.
    Column("detached", Integer),
    Column("held_error_type", Text),
    Column("held_error_message", Text),
    # Migration 11: 1 once the run started a child (NULL otherwise), so a run that
    # ends looks for children to cancel only when it has some.
    Column("has_children", Integer),
    # Migration 16: the latest progress the workflow reported (JSON).
    Column("progress_json", Text),
    # Migration 17: what a fork was forked from; how often the run was retried.
    Column("forked_from_run_id", Text),
    Column("forked_from_step_key", Text),
    Column("retry_count", Integer),
    # Migration 18: the W3C trace context (traceparent, tracestate) the run is in.
    Column("trace_parent", Text),
    Column("trace_state", Text),
    # Migration 19: the concurrency limit the run counts against and its key
    # (NULL for a workflow without a limit), and whether it was admitted (1) or
    # waits for room (0); NULL when it has no limit.
    Column("concurrency_name", Text),
    Column("concurrency_key", Text),
    Column("admitted", Integer),
    # Migration 20: among ready runs a higher priority goes first (NULL: 0).
    Column("priority", Integer),
    # Migration 21: the start rate limit and key the run took its turn under.
    Column("rate_limit", Text),
    Column("rate_key", Text),
    # Migration 22: the debounce key of a run of a workflow with debounce.
    Column("debounce_key", Text),
    UniqueConstraint("run_id"),
    Index("ix_runs_status_seq", "status", "seq"),
    Index("ix_runs_workflow_name_seq", "workflow_name", "seq"),
    Index("ix_runs_parent_run_id_seq", "parent_run_id", "seq"),
    # Migration 2: the lease expiry sweep.
    Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
    # Unique only where set: runs without a key cost no index entry.
    Index(
        "ux_runs_idempotency_key",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index(
        "ix_runs_expire_time",
        "expire_time",
        sqlite_where=text(UNFINISHED),
        postgresql_where=text(UNFINISHED),
    ),
    # Migration 9: a schedule's recent runs, and delayed starts coming due.
    Index("ix_runs_schedule_id_seq", "schedule_id", "seq"),
    Index("ix_runs_status_start_time_not_before", "status", "start_time_not_before"),
    # Migrations 19 and 23: a key's active and waiting runs, in order (open
    # limited runs only).
    Index(
        "ix_runs_concurrency",
        "concurrency_name",
        "concurrency_key",
        "admitted",
        "seq",
        sqlite_where=text(f"concurrency_name IS NOT NULL AND {UNFINISHED}"),
        postgresql_where=text(f"concurrency_name IS NOT NULL AND {UNFINISHED}"),
    ),
    # Migrations 22 and 23: a key's newest pending debounced run.
    Index(
        "ix_runs_workflow_name_debounce_key",
        "workflow_name",
        "debounce_key",
        "seq",
        sqlite_where=text(f"debounce_key IS NOT NULL AND {PENDING_ONLY}"),
        postgresql_where=text(f"debounce_key IS NOT NULL AND {PENDING_ONLY}"),
    ),
    # Migration 17: ended runs by end time (retention).
    Index(
        "ix_runs_end_time",
        "end_time",
        sqlite_where=text("end_time IS NOT NULL"),
        postgresql_where=text("end_time IS NOT NULL"),
    ),
    sqlite_autoincrement=True,
)

steps = Table(
    "steps",
    metadata,
    Column("sequence", AutoIncrementKey, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("runs.run_id"), nullable=False),
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
    # Migration 6: the lease the step was recorded under (journal order).
    Column("lease_id", BigInteger),
    # Exactly-once recording: the first write for a key wins.
    UniqueConstraint("run_id", "step_key"),
    Index("ix_steps_run_id_sequence", "run_id", "sequence"),
    sqlite_autoincrement=True,
)

# Migration 8: failed attempts that are not a step's outcome (retried, or
# ended by the server at the step's timeout), once per (run, key, attempt).
step_attempts = Table(
    "step_attempts",
    metadata,
    Column("sequence", AutoIncrementKey, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("runs.run_id"), nullable=False),
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
    UniqueConstraint("run_id", "step_key", "attempt"),
    sqlite_autoincrement=True,
)

# Migration 3: what suspended runs wait for. A wait is inserted once per
# (run, key), keeping the first fire_time, so a replayed sleep keeps its time.
run_waits = Table(
    "run_waits",
    metadata,
    Column("sequence", AutoIncrementKey, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("runs.run_id"), nullable=False),
    Column("wait_key", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("fire_time", BigInteger),
    Column("create_time", BigInteger, nullable=False),
    Column("met_time", BigInteger),
    Column("payload_json", Text),
    Column("timed_out", Integer, nullable=False),
    # Migration 4: what a signal or event wait waits for (its name).
    Column("target", Text),
    # Migration 5: an event wait's match (JSON object) and when it began.
    Column("match_json", Text),
    Column("since_time", BigInteger),
    # Migration 6: the run's lease when the wait was met (journal order).
    Column("met_lease_id", BigInteger),
    UniqueConstraint("run_id", "wait_key"),
    Index("ix_run_waits_status_fire_time", "status", "fire_time"),
    Index("ix_run_waits_kind_target_status", "kind", "target", "status"),
    sqlite_autoincrement=True,
)

# Migration 4: each run's signal inbox, in send order; consumed_by names the
# wait that took the signal.
signals = Table(
    "signals",
    metadata,
    Column("sequence", AutoIncrementKey, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("runs.run_id"), nullable=False),
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

# Migration 4: history entries that no other table holds (dispatches,
# suspensions, met waits, signals, releases, cancellations, custom entries).
# Triggered, step and completion entries are read from runs and steps.
run_events = Table(
    "run_events",
    metadata,
    Column("sequence", AutoIncrementKey, primary_key=True, autoincrement=True),
    Column("run_id", Text, ForeignKey("runs.run_id"), nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("type", Text, nullable=False),
    Column("key", Text),
    Column("name", Text),
    Column("payload_json", Text),
    Column("attempt", Integer),
    Column("detail", Text),
    # Migration 13: the API key whose call caused the entry, if any.
    Column("actor", Text),
    Index("ix_run_events_run_id_sequence", "run_id", "sequence"),
    Index(
        "ux_run_events_custom_key",
        "run_id",
        "key",
        unique=True,
        sqlite_where=text("type = 'custom'"),
        postgresql_where=text("type = 'custom'"),
    ),
    # Migration 16: progress entries, once per key.
    Index(
        "ux_run_events_progress_key",
        "run_id",
        "key",
        unique=True,
        sqlite_where=text("type = 'progress'"),
        postgresql_where=text("type = 'progress'"),
    ),
    sqlite_autoincrement=True,
)

# Migration 5: published events. A run waiting for an event takes the first
# one of its name published at or after the wait began that matches.
events = Table(
    "events",
    metadata,
    Column("sequence", AutoIncrementKey, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("publish_time", BigInteger, nullable=False),
    Column("actor", Text),  # migration 13
    Index("ux_events_event_id", "event_id", unique=True),
    Index("ix_events_name_publish_time", "name", "publish_time"),
    sqlite_autoincrement=True,
)

# Migration 7: per-database secrets (the key hook tokens are derived from).
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# Migration 7: hook executions, keyed by the SHA-256 of the token (the token
# itself is never stored). "pending" until the run waits on the hook.
hooks = Table(
    "hooks",
    metadata,
    Column("token_hash", Text, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("wait_key", Text, nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("execute_time", BigInteger, nullable=False),
    Column("actor", Text),  # migration 13
    Index("ix_hooks_run_id", "run_id"),  # migration 17: deleting a run
)

# Migration 9: the events each workflow version starts a run on.
workflow_triggers = Table(
    "workflow_triggers",
    metadata,
    Column("workflow_name", Text, nullable=False),
    Column("workflow_version", Text, nullable=False),
    Column("event_name", Text, nullable=False),
    PrimaryKeyConstraint("workflow_name", "workflow_version", "event_name"),
    Index("ix_workflow_triggers_event_name", "event_name"),
)

# Migration 9: cron schedules. next_time is the next occasion to handle (the
# cursor a restart resumes from); last_run_id the run the last one started.
schedules = Table(
    "schedules",
    metadata,
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

workflow_versions = Table(
    "workflow_versions",
    metadata,
    Column("name", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("first_seen", BigInteger, nullable=False),
    Column("retire_time", BigInteger),  # migration 13
    PrimaryKeyConstraint("name", "version"),
)

# Migration 13: API keys. Only the SHA-256 of a key is stored; workflows is a
# JSON list (the workflows a worker key may serve).
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("workflows", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("create_time", BigInteger, nullable=False),
    Column("expire_time", BigInteger),
    Column("revoke_time", BigInteger),
    Column("created_by", Text, nullable=False),
)

# Migration 13: the version an operator pinned as a workflow's current one.
workflow_pins = Table(
    "workflow_pins",
    metadata,
    Column("workflow_name", Text, primary_key=True),
    Column("version", Text, nullable=False),
    Column("pin_time", BigInteger, nullable=False),
)

# Migration 19: the concurrency limit each workflow declared (its worker's
# hello); several workflows share a limit by its name.
concurrency_limits = Table(
    "concurrency_limits",
    metadata,
    Column("workflow_name", Text, primary_key=True),
    Column("limit_name", Text, nullable=False),
    Column("key_path", Text, nullable=False),
    Column("max_active", Integer, nullable=False),
    Column("strategy", Text, nullable=False),
    Column("update_time", BigInteger, nullable=False),
    Index("ix_concurrency_limits_limit_name", "limit_name"),
)

# Migration 20: the flow-control settings each workflow declared (its worker's
# hello) as a JSON object: default priority, start rate limit, debounce.
workflow_flow = Table(
    "workflow_flow",
    metadata,
    Column("workflow_name", Text, primary_key=True),
    Column("settings_json", Text, nullable=False),
    Column("update_time", BigInteger, nullable=False),
)

# Migration 21: per rate limit and key, when the latest turn begins and the
# spacing between turns (the period over the limit, rounded up).
rate_turns = Table(
    "rate_turns",
    metadata,
    Column("limit_name", Text, nullable=False),
    Column("limit_key", Text, nullable=False),
    Column("last_turn", BigInteger, nullable=False),
    Column("spacing_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("limit_name", "limit_key"),
)

# Migration 17: every replica's worker streams (workflows: a JSON list of
# [name, version]), rewritten by their replica every few seconds.
connected_workers = Table(
    "connected_workers",
    metadata,
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

#: Migration bookkeeping, created by the migration runner before migration 1.
#: Its shape never changes.
schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", BigInteger, nullable=False),
)
