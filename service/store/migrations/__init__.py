"""Versioned, append-only schema migrations, applied when the store opens.

Each migration is a module ``vNNNN_<name>.py`` with a ``DESCRIPTION`` and an
``upgrade(conn)`` function; once released it never changes. To change the
schema, add the next module to ``MIGRATIONS`` and update
``stepd.server.store.schema`` to match (a test compares the two).

The applied versions are rows of ``schema_migrations``. ``migrate`` runs every
pending migration and records it inside the caller's transaction (the store
runs it as one write), so a crash leaves the database at the old version or
the new one. On SQLite the transaction starts
with ``BEGIN IMMEDIATE``, which also keeps two processes opening one file at
once from migrating it twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select

from stepd.server.domain import now_ms
from stepd.server.store import schema
from stepd.server.store.migrations import (
    v0001_initial,
    v0002_lease_expiry_index,
    v0003_run_waits,
    v0004_signals_and_history,
    v0005_events,
    v0006_journal_order,
    v0007_hooks,
    v0008_failure_policy,
    v0009_starts,
    v0010_children_and_holds,
    v0011_has_children,
    v0013_keys_and_versions,
    v0016_progress,
    v0017_run_actions,
    v0018_trace_context,
    v0019_concurrency,
    v0020_priorities,
    v0021_rate_limits,
    v0022_debounce,
    v0023_open_run_indexes,
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: its version number and how to apply it."""

    version: int
    description: str
    upgrade: Callable[[Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, v0001_initial.DESCRIPTION, v0001_initial.upgrade),
    Migration(2, v0002_lease_expiry_index.DESCRIPTION, v0002_lease_expiry_index.upgrade),
    Migration(3, v0003_run_waits.DESCRIPTION, v0003_run_waits.upgrade),
    Migration(4, v0004_signals_and_history.DESCRIPTION, v0004_signals_and_history.upgrade),
    Migration(5, v0005_events.DESCRIPTION, v0005_events.upgrade),
    Migration(6, v0006_journal_order.DESCRIPTION, v0006_journal_order.upgrade),
    Migration(7, v0007_hooks.DESCRIPTION, v0007_hooks.upgrade),
    Migration(8, v0008_failure_policy.DESCRIPTION, v0008_failure_policy.upgrade),
    Migration(9, v0009_starts.DESCRIPTION, v0009_starts.upgrade),
    Migration(10, v0010_children_and_holds.DESCRIPTION, v0010_children_and_holds.upgrade),
    Migration(11, v0011_has_children.DESCRIPTION, v0011_has_children.upgrade),
    Migration(13, v0013_keys_and_versions.DESCRIPTION, v0013_keys_and_versions.upgrade),
    Migration(16, v0016_progress.DESCRIPTION, v0016_progress.upgrade),
    Migration(17, v0017_run_actions.DESCRIPTION, v0017_run_actions.upgrade),
    Migration(18, v0018_trace_context.DESCRIPTION, v0018_trace_context.upgrade),
    Migration(19, v0019_concurrency.DESCRIPTION, v0019_concurrency.upgrade),
    Migration(20, v0020_priorities.DESCRIPTION, v0020_priorities.upgrade),
    Migration(21, v0021_rate_limits.DESCRIPTION, v0021_rate_limits.upgrade),
    Migration(22, v0022_debounce.DESCRIPTION, v0022_debounce.upgrade),
    Migration(23, v0023_open_run_indexes.DESCRIPTION, v0023_open_run_indexes.upgrade),
)

#: The schema version this code expects.
LATEST_VERSION = MIGRATIONS[-1].version


class SchemaVersionError(Exception):
    """The database was migrated by a newer stepd than this one."""


def current_version(conn: Connection) -> int:
    """Return the database's schema version (0 for an empty database)."""
    schema.schema_migrations.create(conn, checkfirst=True)
    version = conn.execute(select(func.max(schema.schema_migrations.c.version))).scalar()
    return int(version or 0)


def migrate(conn: Connection) -> list[int]:
    """Apply pending migrations inside the caller's transaction; return their versions.

    Pending means not recorded in ``schema_migrations``, not only above the
    newest recorded version: migrations written on parallel branches may
    arrive out of order, and each is applied once.
    """
    version = current_version(conn)
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"the database schema is at version {version}, but this stepd only knows "
            f"versions up to {LATEST_VERSION}; upgrade stepd"
        )
    done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        migration.upgrade(conn)
        conn.execute(
            insert(schema.schema_migrations).values(
                version=migration.version,
                description=migration.description,
                applied_at=now_ms(),
            )
        )
        applied.append(migration.version)
    return applied
