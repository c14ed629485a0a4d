"""SQLite engine setup: one writer connection and a small pool of readers over one file.

The database runs in WAL mode, so readers never block the writer and the
writer never blocks readers. Write transactions start with ``BEGIN IMMEDIATE``
(taking the write lock up front, so a transaction never fails half-way on a
lock upgrade); this uses SQLAlchemy's documented event-hook recipe for
pysqlite/aiosqlite: the driver's own transaction handling is switched off in a
``connect`` hook and SQLAlchemy emits the BEGIN in a ``begin`` hook.

Both engines are synchronous (pysqlite) and used from store-owned threads:
the writer from the group committer's thread (``group_commit``), the readers
from a small thread pool (``read_pool``). The event loop only awaits one
hand-off per batch or read; an async driver (aiosqlite) costs about four
thread round trips per statement, which measured several times slower.

Durability (``synchronous``):

* ``FULL`` (default): every commit is fsynced before it is acknowledged; an
  acknowledged write survives a power loss or OS crash.
* ``NORMAL``: commits are fsynced at WAL checkpoints only; an acknowledged
  write survives a crash of the stepd process, but the last commits may be
  lost on power loss or OS crash. The database is never corrupted either way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from stepd.server.store.errors import StoreError, StoreUnavailableError, StoreValueError

Synchronous = Literal["FULL", "NORMAL"]
SYNCHRONOUS_MODES: tuple[Synchronous, ...] = ("FULL", "NORMAL")

DEFAULT_BUSY_TIMEOUT_MS = 5_000
DEFAULT_READERS = 4

#: SQLite's primary result codes of a database that cannot be used now: BUSY,
#: LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
#: ... and of a value it refuses: TOOBIG, CONSTRAINT, MISMATCH, RANGE.
VALUE_CODES = frozenset({18, 19, 20, 25})


def parse_synchronous(value: str) -> Synchronous:
    """Validate a ``synchronous`` setting (case-insensitive)."""
    upper = value.upper()
    if upper not in SYNCHRONOUS_MODES:
        choices = ", ".join(SYNCHRONOUS_MODES)
        raise ValueError(f"synchronous must be one of {choices}, not {value!r}")
    return upper


def classify(exc: BaseException) -> type[StoreError] | None:
    """Which store error an exception of pysqlite (through SQLAlchemy) is."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, OverflowError):  # an integer wider than 64 bits
        return StoreValueError
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        if code & 0xFF in UNAVAILABLE_CODES:
            return StoreUnavailableError
        if code & 0xFF in VALUE_CODES:
            return StoreValueError
    if isinstance(orig, sqlite3.IntegrityError | sqlite3.DataError):
        return StoreValueError
    if isinstance(orig, sqlite3.OperationalError | OSError):
        return StoreUnavailableError
    return None


def _pragmas(dbapi_connection: DBAPIConnection, statements: list[str]) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


def create_writer_engine(
    path: Path,
    *,
    synchronous: Synchronous = "FULL",
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> Engine:
    """Return a (synchronous) engine with exactly one connection, for all writes.

    Its transactions begin with ``BEGIN IMMEDIATE``; the connection sets WAL
    mode, the ``synchronous`` level, ``busy_timeout`` and ``foreign_keys``.
    """
    engine = create_engine(f"sqlite+pysqlite:///{path}", pool_size=1, max_overflow=0)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Stop the driver from emitting its own BEGIN; the "begin" hook does it.
        cast(Any, dbapi_connection).isolation_level = None
        _pragmas(
            dbapi_connection,
            [
                f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
                "PRAGMA journal_mode = WAL",
                f"PRAGMA synchronous = {parse_synchronous(synchronous)}",
                "PRAGMA foreign_keys = ON",
            ],
        )

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.dispatch.before_cursor_execute:  # someone watches statements: show it
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # Straight on the driver, as ``direct.py`` runs the hot statements: through
        # SQLAlchemy it cost a tenth of the server's time in a run of sequential
        # steps (one write per commit). Errors classify the same (``classify``
        # reads ``orig or`` the error itself); a lost connection is dropped, as
        # SQLAlchemy would.
        dbapi_connection = conn.connection.dbapi_connection
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if conn.dialect.is_disconnect(exc, dbapi_connection, None):
                conn.invalidate(exc)
            raise

    return engine


def create_reader_engine(
    path: Path,
    *,
    readers: int = DEFAULT_READERS,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> Engine:
    """Return a (synchronous) engine with a small pool of read-only connections.

    Each statement runs in its own implicit read transaction (driver-level
    autocommit): a WAL reader sees the last commit and never blocks the writer.
    """
    engine = create_engine(
        f"sqlite+pysqlite:///{path}",
        isolation_level="AUTOCOMMIT",
        pool_size=readers,
        max_overflow=0,
        pool_reset_on_return=None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        _pragmas(
            dbapi_connection,
            [
                f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
                "PRAGMA foreign_keys = ON",
                "PRAGMA query_only = ON",
            ],
        )

    return engine
