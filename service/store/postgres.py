"""PostgreSQL: the engine (asyncpg through SQLAlchemy's async engine) and its executor.

The store's statements are the same synchronous SQLAlchemy Core operations as
on SQLite (``stepd.server.store.executor``). ``PostgresExecutor`` runs each one on
a pooled asyncpg connection with ``AsyncConnection.run_sync``, which drives
the synchronous code from a greenlet: every statement awaits the driver
directly on the event loop, with no thread hand-off.

* Writes are group-committed (``stepd.server.store.write_lanes``): up to
  ``WRITE_LANES`` READ COMMITTED transactions at once, each carrying every
  write queued when it began. A transaction per write spent more of the
  server's CPU on BEGIN, COMMIT and the pool than on the statements. Writes
  that race on one run are made safe by the statements themselves: guarded
  ``UPDATE``s, ``ON CONFLICT DO NOTHING``, and the row and advisory locks of
  ``stepd.server.store.dialects``, always taken in one order. A batch holds
  several runs' locks in no such order, so it waits at most
  ``BATCH_LOCK_TIMEOUT_MS`` for a lock and then gives way: its writes run
  again one by one. A single write aborted by a deadlock or a serialization
  failure is retried.
* A read runs in autocommit mode: each statement sees the latest commit, as a
  SQLite WAL reader does.
* A caller that gives up (its task is cancelled) does not cut a transaction
  short: a write that has started runs to its end in its batch's task, and
  one still queued is dropped, as on SQLite.

The server holds at most ``pool_size`` connections (writes and reads share
them). Migrations run under an advisory lock, so servers starting together
migrate once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stepd.server.config import DEFAULT_DB_POOL_SIZE
from stepd.server.store import declared
from stepd.server.store.errors import (
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    StoreValueError,
    translate,
)
from stepd.server.store.executor import CommitStats, ReadOp, WriteOp
from stepd.server.store.migrations import migrate
from stepd.server.store.write_lanes import WriteLanes

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Connections per server when no pool size is given (W1 measured 165 runs/s
#: with 10 and 205 with 20 on a 2-core machine; see docs/operations.md).
DEFAULT_POOL_SIZE = DEFAULT_DB_POOL_SIZE
#: Write transactions open at once, each carrying a batch of writes
#: (``write_lanes``). W1 on a 2-core machine, runs/s: 268 with a transaction
#: per write, 441 with one lane, 496 with two, 490 with four.
WRITE_LANES = 2
#: How long a batch of writes waits for a row or advisory lock before it gives
#: way: it is rolled back and its writes run one by one, each taking its locks
#: in the store's order (``dialects``), so batches never deadlock for long.
BATCH_LOCK_TIMEOUT_MS = 100
#: Attempts of a write aborted by a deadlock or a serialization failure.
WRITE_ATTEMPTS = 5
#: SQLSTATEs after which a transaction is simply run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
#: The advisory lock held while migrating ("stepd" in ASCII, as a bigint).
MIGRATION_LOCK_KEY = 0x7374657064

#: SQLSTATE classes of a database that cannot be used now: connection exception,
#: insufficient resources (disk full, out of memory, too many connections),
#: operator intervention (shutdown, terminated), system error; and the states
#: of a database that was dropped or takes no connections.
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
UNAVAILABLE_SQLSTATES = frozenset({"3D000", "55000", "55006"})
#: ... and of a value it refuses: data exception, integrity constraint violation,
#: program limit exceeded (e.g. an index row too large).
VALUE_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})

_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
#: libpq's sslmode values, which asyncpg accepts as ``ssl``.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def is_postgres_url(database: str) -> bool:
    """Whether ``database`` names a PostgreSQL database (rather than a SQLite file)."""
    return database.startswith(("postgresql:", "postgresql+", "postgres:"))


def async_url(database: str) -> URL:
    """The ``postgresql+asyncpg://`` URL for a ``postgresql://`` (or ``postgres://``) one.

    Raises ValueError for another driver or a URL without a database name.
    """
    try:
        url = make_url(database)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"not a valid PostgreSQL URL: {exc}") from None
    if url.drivername not in _SCHEMES:
        raise ValueError(
            f"stepd reaches PostgreSQL through asyncpg: use postgresql://..., "
            f"not {url.drivername}://..."
        )
    if not url.database:
        raise ValueError(
            "the PostgreSQL URL names no database (expected postgresql://user@host:5432/dbname)"
        )
    return url.set(drivername="postgresql+asyncpg", query=_driver_query(url))


def _driver_query(url: URL) -> dict[str, str]:
    """The URL's query as asyncpg takes it: libpq's ``sslmode`` becomes ``ssl``.

    Managed providers hand out URLs with ``?sslmode=require``; asyncpg names
    the same setting ``ssl``. Any other parameter is refused by name rather
    than failing deep inside the driver.
    """
    query: dict[str, str] = {}
    for name, value in url.query.items():
        text = value if isinstance(value, str) else value[-1]
        if name in ("sslmode", "ssl"):
            if text not in SSL_MODES:
                raise ValueError(
                    f"{name}={text!r} in the PostgreSQL URL: expected one of "
                    + ", ".join(SSL_MODES)
                )
            query["ssl"] = text
        else:
            raise ValueError(
                f"unsupported parameter {name!r} in the PostgreSQL URL "
                "(stepd takes sslmode; other settings come from PG* environment variables)"
            )
    return query


def display_url(database: str) -> str:
    """``database`` with its password hidden, for logs."""
    if not is_postgres_url(database):
        return database
    try:
        return make_url(database).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<invalid PostgreSQL URL>"


def create_engine(database: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> AsyncEngine:
    """An async engine for ``database`` holding at most ``pool_size`` connections."""
    if pool_size < 1:
        raise ValueError("the PostgreSQL pool size must be at least 1")
    return create_async_engine(
        async_url(database),
        pool_size=pool_size,
        max_overflow=0,
        isolation_level="READ COMMITTED",
    )


def migrate_locked(conn: Connection) -> list[int]:
    """``migrate`` under a transaction-scoped advisory lock: one server migrates,
    the others wait for it and then find nothing to do."""
    conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    return migrate(conn)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error raised through SQLAlchemy, if it has one."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def classify(exc: BaseException) -> type[StoreError] | None:
    """Which store error an exception of asyncpg (through SQLAlchemy) is."""
    state = sqlstate(exc) or getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        if state[:2] in VALUE_SQLSTATE_CLASSES:
            return StoreValueError
        if state[:2] in UNAVAILABLE_SQLSTATE_CLASSES or state in UNAVAILABLE_SQLSTATES:
            return StoreUnavailableError
    orig = getattr(exc, "orig", None) or exc
    if getattr(exc, "connection_invalidated", False):
        return StoreUnavailableError
    if isinstance(orig, OSError | TimeoutError | ConnectionError):
        return StoreUnavailableError
    name = type(orig).__name__
    if isinstance(exc, DBAPIError) and name in ("InterfaceError", "InternalClientError"):
        return StoreUnavailableError  # e.g. the connection closed under a statement
    return None


class PostgresExecutor:
    """Runs the store's operations on a pool of asyncpg connections.

    Serves as both the ``Committer`` and the ``Reader`` of a ``SqlStore``;
    owns ``engine`` and disposes of it on ``close``.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = False
        self._stats = CommitStats()
        self._lanes = WriteLanes(self._write_batch, self._write, self._stats, lanes=WRITE_LANES)

    @property
    def stats(self) -> CommitStats:
        """Counters of commits, writes and batches."""
        return self._stats

    @property
    def engine(self) -> Engine:
        """The engine's synchronous view (its dialect; events such as before_cursor_execute)."""
        return self._engine.sync_engine

    @property
    def ordered(self) -> bool:
        """Per run: writes about one run run in order (``write_lanes``)."""
        return True

    async def start(self) -> None:
        """Nothing to start: connections open on first use."""
        if self._closing:
            raise RuntimeError("the executor was closed")

    async def submit(self, op: WriteOp[T], key: str | None = None) -> T:
        """Run ``op`` in a transaction (shared with the writes queued beside it);
        return its result once committed. Writes with one ``key`` run in order."""
        if self._closing:
            raise StoreClosedError("the store is closed")
        try:
            return await self._lanes.submit(op, key)
        except Exception as exc:
            error = translate(exc, classify)
            if error is exc:
                raise
            raise error from exc

    async def run(self, op: ReadOp[T]) -> T:
        """Run ``op`` on a connection in autocommit mode."""
        return await self._detached(self._read(op))

    async def close(self) -> None:
        """Refuse new operations, let those in flight finish, close every connection."""
        if self._closed:
            return
        self._closed = self._closing = True
        await self._lanes.close()
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._engine.dispose()

    async def _detached(self, work: Coroutine[Any, Any, T]) -> T:
        if self._closing:
            work.close()
            raise StoreClosedError("the store is closed")
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._finished)
        try:
            return await asyncio.shield(task)
        except Exception as exc:
            error = translate(exc, classify)
            if error is exc:
                raise
            raise error from exc

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here when the caller gave up waiting

    async def _write(self, op: WriteOp[T]) -> T:
        attempt = 1
        while True:
            try:
                async with self._engine.begin() as conn:
                    result = await conn.run_sync(op)
                self._stats.commits += 1
                self._stats.ops += 1
                return result
            except DBAPIError as exc:
                if sqlstate(exc) not in RETRYABLE_SQLSTATES or attempt >= WRITE_ATTEMPTS:
                    raise
                log.debug("write aborted (%s); running it again", sqlstate(exc))
            attempt += 1
            await asyncio.sleep(random.uniform(0, 0.002 * attempt))

    async def _write_batch(self, ops: list[WriteOp[Any]]) -> list[Any]:
        async with self._engine.begin() as conn:
            results = await conn.run_sync(_run_batch, ops)
        self._stats.commits += 1
        self._stats.ops += len(ops)
        return results

    async def _read(self, op: ReadOp[T]) -> T:
        async with self._autocommit.connect() as conn:
            return await conn.run_sync(op)


def _run_batch(conn: Connection, ops: list[WriteOp[Any]]) -> list[Any]:
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {BATCH_LOCK_TIMEOUT_MS}")
    with declared.for_batch(conn):
        return [op(conn) for op in ops]
