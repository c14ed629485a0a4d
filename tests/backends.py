"""The two store backends the tests run against, and fresh PostgreSQL databases.

Tests that take the ``database`` fixture (directly or through ``store``,
``harness`` or ``server``) run once per backend: ``sqlite`` always,
``postgres`` when ``STEPD_TEST_POSTGRES_URL`` names a PostgreSQL server
(``postgresql://user@host:port/dbname``; the user needs CREATEDB).

Each PostgreSQL test gets a database of its own, copied from a template that
was migrated once per session (``CREATE DATABASE ... TEMPLATE``, about 30 ms),
and dropped in the background after the test. The databases are named
``stepd_test_<pid>_<n>``; those of sessions that died are dropped at the start
of the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sqlite3
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

POSTGRES_URL_ENV = "STEPD_TEST_POSTGRES_URL"
SKIP_POSTGRES = f"set {POSTGRES_URL_ENV} to run the PostgreSQL tests"
BACKENDS = ("sqlite", "postgres")

T = TypeVar("T")
_NAME = re.compile(r"^stepd_test_(\d+)_")


def postgres_url() -> str | None:
    """The PostgreSQL server the tests may use, or None."""
    return os.environ.get(POSTGRES_URL_ENV) or None


class PostgresDatabases:
    """Creates and drops test databases on one admin connection.

    The admin connection lives on its own thread and event loop, so fixtures
    can use it from synchronous code and from any test's event loop.
    """

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._prefix = f"stepd_test_{os.getpid()}_"
        self._template = f"{self._prefix}template"
        self._counter = itertools.count(1)
        self._drops: list[Future[None]] = []
        self._lock = asyncio.Lock()  # one statement at a time on the admin connection
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: asyncpg.Connection | None = None
        self._call(self._start())

    def url_of(self, name: str) -> str:
        """The URL of database ``name`` on the same server, as the user wrote it."""
        return self._url.set(database=name).render_as_string(hide_password=False)

    def create(self, *, migrated: bool = True) -> str:
        """A new database (with the current schema, or empty); returns its URL."""
        name = f"{self._prefix}{next(self._counter)}"
        template = self._template if migrated else "template0"
        self._call(self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return self.url_of(name)

    def drop(self, url: str) -> None:
        """Drop a database made by ``create`` (in the background)."""
        name = make_url(url).database
        assert name is not None and name.startswith(self._prefix)
        self._drops.append(self._submit(self._drop(name)))

    def close(self) -> None:
        """Wait for pending drops, drop the template, close the connection."""
        for future in self._drops:
            with contextlib.suppress(Exception):
                future.result()
        with contextlib.suppress(Exception):
            self._call(self._drop(self._template))
        if self._conn is not None:
            self._call(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # -- on the admin thread ----------------------------------------------

    async def _start(self) -> None:
        from stepd.server.store import open_store

        url = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn = await asyncpg.connect(url)
        await self._drop_dead_sessions()
        await self._drop(self._template)
        await self._execute(f'CREATE DATABASE "{self._template}" TEMPLATE template0')
        store = await open_store(self.url_of(self._template))  # migrate the template once
        await store.close()

    async def _drop_dead_sessions(self) -> None:
        assert self._conn is not None
        async with self._lock:
            names = await self._conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'stepd\\_test\\_%'"
            )
        for (name,) in names:
            found = _NAME.match(name)
            if found and not _alive(int(found[1])):
                await self._drop(name)

    async def _execute(self, sql: str) -> None:
        assert self._conn is not None
        async with self._lock:
            await self._conn.execute(sql)

    async def _drop(self, name: str) -> None:
        await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return self._submit(work).result(timeout=60)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def query(database: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one SQL statement run straight on ``database`` (either backend)."""
    from stepd.server.store.postgres import is_postgres_url

    if is_postgres_url(database):
        conn = await asyncpg.connect(
            make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        return db.execute(sql).fetchall()


async def table_names(database: str) -> set[str]:
    """The names of the tables in ``database`` (SQLite's own tables left out)."""
    from stepd.server.store.postgres import is_postgres_url

    if is_postgres_url(database):
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    return {name for (name,) in await query(database, sql)}
