"""Per-database statement builders and locks, chosen by the connection's dialect name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import ColumnElement, Connection, LargeBinary, Table, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite

from stepd.server.store.schema import runs

#: An INSERT that supports ``on_conflict_do_nothing`` on both databases.
UpsertInsert = sqlite.Insert | postgresql.Insert

SUPPORTED_DIALECTS = ("sqlite", "postgresql")


def insert_for(dialect_name: str) -> Callable[[Table], UpsertInsert]:
    """Return the dialect's ``insert`` constructor (with ON CONFLICT support)."""
    if dialect_name == "sqlite":
        return sqlite.insert
    if dialect_name == "postgresql":
        return postgresql.insert
    raise ValueError(
        f"unsupported database dialect {dialect_name!r}; "
        f"expected one of {', '.join(SUPPORTED_DIALECTS)}"
    )


# -- row locks for concurrent writers (PostgreSQL) -----------------------------
#
# SQLite runs one write transaction at a time (BEGIN IMMEDIATE takes the
# database's write lock), so these are no-ops there. PostgreSQL runs write
# transactions concurrently at READ COMMITTED: a check-then-write on a run's
# waits, signals or hooks would race. One lock order keeps them apart without
# deadlocks: event-name locks first, then the run's row, then its waits.

#: First key of the advisory locks on event names ("stev" in ASCII).
EVENT_LOCK_CLASS = 0x73746576


def lock_run(conn: Connection, run_id: str) -> None:
    """Hold the run's row lock until the transaction ends (PostgreSQL only).

    Every write that reads and then changes a run's waits, signals or hooks
    takes it first (the guarded UPDATEs of ``runs`` take it by themselves).
    """
    if conn.dialect.name != "sqlite":
        conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id).with_for_update())


def lock_event_names(conn: Connection, names: Iterable[str]) -> None:
    """Hold a lock per event name until the transaction ends (PostgreSQL only).

    Publishing an event and registering a wait for it take the name's lock
    before any run's row, so neither misses the other's uncommitted row.
    """
    if conn.dialect.name == "sqlite":
        return
    for name in sorted(set(names)):
        conn.execute(select(func.pg_advisory_xact_lock(EVENT_LOCK_CLASS, func.hashtext(name))))


def byte_length(dialect_name: str, column: ColumnElement[Any]) -> ColumnElement[int]:
    """The length of a text column in bytes, 0 for NULL, read as cheaply as the
    database allows: PostgreSQL takes it from the stored value's header (no
    decompression); SQLite counts bytes, not characters."""
    if dialect_name == "postgresql":
        return func.coalesce(func.octet_length(column), 0)
    return func.coalesce(func.length(cast(column, LargeBinary)), 0)
