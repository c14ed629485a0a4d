"""Direct: hot statements on the driver (SQLite's, and asyncpg through SQLAlchemy's
adapter), the same rows and errors as SQLAlchemy's way."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    event,
    func,
    select,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import TypeDecorator

from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import open_store
from stepd.server.store.direct import Direct
from stepd.server.store.errors import StoreUnavailableError, translate
from stepd.server.store.postgres import classify as pg_classify
from stepd.server.store.postgres import create_engine as create_pg_engine
from stepd.server.store.postgres import sqlstate as pg_sqlstate
from stepd.server.store.sqlite import classify, create_writer_engine

from .conftest import new_run


class Upper(TypeDecorator[str]):
    """A type that converts what it binds (so a statement using it goes the usual way)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return value.upper() if value is not None else None


metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("loud", Upper),
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, list[str]]]:
    """The store's SQLite writer engine, with every statement the driver runs traced."""
    engine = create_writer_engine(tmp_path / "direct.db")
    traced: list[str] = []

    @event.listens_for(engine, "connect")
    def _trace(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.set_trace_callback(traced.append)

    metadata.create_all(engine)
    yield engine, traced
    engine.dispose()


INSERT = Direct(things.insert().returning(things.c.id, things.c.name))
BY_ID = Direct(select(things).where(things.c.id == bindparam("p_id"), things.c.state == "new"))


def test_a_statement_runs_on_the_driver_and_reads_back_by_name(
    engine: tuple[Engine, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    writer, traced = engine
    writer.echo = True  # SQLAlchemy logs each statement it runs itself
    with caplog.at_level(logging.INFO, "sqlalchemy.engine"), writer.begin() as conn:
        row = INSERT.first(conn, {"id": 7, "name": "seven", "state": "new"})
        assert row == {"id": 7, "name": "seven"}
        found = BY_ID.first(conn, {"p_id": 7})
        # The value fixed in the statement ("new") is bound too.
        assert found == {"id": 7, "name": "seven", "state": "new", "loud": None}
        assert BY_ID.first(conn, {"p_id": 8}) is None
    assert [line.split()[0] for line in traced[-5:]] == [
        "BEGIN",
        "INSERT",
        "SELECT",
        "SELECT",
        "COMMIT",
    ]
    # SQLAlchemy ran none of them itself, not even the writer's BEGIN IMMEDIATE.
    logged = [record.getMessage() for record in caplog.records]
    assert not [m for m in logged if m.startswith(("BEGIN IMMEDIATE", "INSERT", "SELECT"))]
    with writer.connect() as conn:
        assert conn.execute(select(things.c.name)).scalars().all() == ["seven"]


def test_a_rollback_undoes_what_ran_on_the_driver(engine: tuple[Engine, list[str]]) -> None:
    writer, _ = engine
    with writer.connect() as conn:
        transaction = conn.begin()
        INSERT.execute(conn, {"id": 1, "name": "one", "state": "new"})
        transaction.rollback()
        assert conn.execute(select(things)).all() == []


def test_listeners_and_converting_types_go_the_usual_way(engine: tuple[Engine, list[str]]) -> None:
    writer, _ = engine
    seen: list[str] = []

    def capture(*args: Any) -> None:
        seen.append(args[2])

    loud = Direct(things.insert())
    with writer.begin() as conn:
        loud.execute(conn, {"id": 2, "name": "two", "state": "new", "loud": "quiet"})
        event.listen(writer, "before_cursor_execute", capture)
        try:
            assert BY_ID.first(conn, {"p_id": 2}) == {
                "id": 2,
                "name": "two",
                "state": "new",
                "loud": "QUIET",  # the type's conversion ran
            }
        finally:
            event.remove(writer, "before_cursor_execute", capture)
    assert len(seen) == 1 and seen[0].startswith("SELECT")


def test_a_listener_sees_the_writers_begin_too(engine: tuple[Engine, list[str]]) -> None:
    writer, traced = engine
    seen: list[str] = []

    def capture(*args: Any) -> None:
        seen.append(args[2])

    event.listen(writer, "before_cursor_execute", capture)
    try:
        with writer.begin() as conn:
            INSERT.execute(conn, {"id": 3, "name": "three", "state": "new"})
    finally:
        event.remove(writer, "before_cursor_execute", capture)
    assert [statement.split()[0] for statement in seen] == ["BEGIN", "INSERT"]
    assert traced[-3].startswith("BEGIN IMMEDIATE")


def test_a_begin_refused_on_the_driver_fails_as_unavailable(
    engine: tuple[Engine, list[str]], tmp_path: Path
) -> None:
    writer, _ = engine
    with writer.connect() as conn:
        conn.exec_driver_sql("PRAGMA busy_timeout = 0")
        conn.commit()
    locker = sqlite3.connect(tmp_path / "direct.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with writer.connect() as conn, pytest.raises(sqlite3.OperationalError) as refused:
            conn.begin()
        assert classify(refused.value) is StoreUnavailableError
        assert str(translate(refused.value, classify)) == "database is locked"
    finally:
        locker.close()
    with writer.begin() as conn:  # the writer's connection still works afterwards
        INSERT.execute(conn, {"id": 4, "name": "four", "state": "new"})


async def test_one_statement_serves_a_sqlite_and_a_postgresql_store(
    tmp_path: Path, pg_database: str
) -> None:
    """The store's statements are shared by every store in a process: SQLite's
    plan is never used on PostgreSQL."""
    for database in (str(tmp_path / "first.db"), pg_database, str(tmp_path / "again.db")):
        store = await open_store(database)
        try:
            await store.create_run(new_run("r1"))
            claimed = await store.claim_run("r1", "w", 60_000)  # adds a history entry
            assert claimed is not None
            ended = await store.complete_run(
                "r1", move(RunEvent.COMPLETE), claimed.run.lease_id, "1"
            )
            assert ended is not None and ended.result_json == "1"
            assert [entry.type for entry in await store.run_history("r1") or []][
                -1
            ].value == "completed"
        finally:
            await store.close()


def test_values_rendered_into_the_sql_per_call_go_the_usual_way(
    engine: tuple[Engine, list[str]],
) -> None:
    writer, _ = engine
    limited = Direct(
        select(things.c.id)
        .order_by(things.c.id)
        .limit(bindparam("p_n", type_=Integer, literal_execute=True))
    )
    listed = Direct(select(things.c.id).where(things.c.id.in_(bindparam("p_ids", expanding=True))))
    with writer.begin() as conn:
        for i in (1, 2, 3):
            INSERT.execute(conn, {"id": i, "name": str(i), "state": "new"})
        assert limited.first(conn, {"p_n": 2}) == {"id": 1}
        assert listed.first(conn, {"p_ids": [3, 2]}) == {"id": 2}


# -- PostgreSQL: statements on the asyncpg adapter's cursor ------------------------


@pytest.fixture
async def pg_engine(pg_database: str) -> AsyncIterator[AsyncEngine]:
    """The store's engine on a fresh PostgreSQL database, with the ``things`` table."""
    engine = create_pg_engine(pg_database)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def test_on_postgresql_a_statement_skips_sqlalchemys_execution(
    pg_engine: AsyncEngine,
) -> None:
    seen: list[str] = []

    def note(conn: Any, clause: Any, *_: Any) -> None:
        seen.append(str(clause).split()[0])

    event.listen(pg_engine.sync_engine, "before_execute", note)
    async with pg_engine.begin() as conn:
        row = await conn.run_sync(INSERT.first, {"id": 1, "name": "one", "state": "new"})
        assert row == {"id": 1, "name": "one"}
        assert seen == []  # ran on the driver: SQLAlchemy's execution never saw it
        found = await conn.run_sync(BY_ID.first, {"p_id": 1})
        assert found is not None and found["name"] == "one" and found["loud"] is None
        await conn.execute(things.update().values(state="old"))
        assert seen == ["UPDATE"]  # the listener does see SQLAlchemy's own statements
        assert await conn.run_sync(BY_ID.first, {"p_id": 1}) is None


async def test_on_postgresql_a_first_statement_runs_inside_the_transaction(
    pg_engine: AsyncEngine,
) -> None:
    async with pg_engine.connect() as conn:
        await conn.begin()
        await conn.run_sync(INSERT.execute, {"id": 2, "name": "two", "state": "new"})
        await conn.rollback()
    async with pg_engine.connect() as conn:
        assert await conn.run_sync(BY_ID.first, {"p_id": 2}) is None


async def test_on_postgresql_an_error_is_what_sqlalchemy_raises(pg_engine: AsyncEngine) -> None:
    async with pg_engine.begin() as conn:
        await conn.run_sync(INSERT.execute, {"id": 3, "name": "three", "state": "new"})
    with pytest.raises(IntegrityError) as raised:
        async with pg_engine.begin() as conn:
            await conn.run_sync(INSERT.execute, {"id": 3, "name": "again", "state": "new"})
    assert pg_sqlstate(raised.value) == "23505"  # unique_violation, read as the store reads it
    async with pg_engine.connect() as conn:  # the pool's connection still works
        found = await conn.run_sync(BY_ID.first, {"p_id": 3})
        assert found is not None and found["name"] == "three"


async def test_on_postgresql_a_lost_connection_is_invalidated_and_unavailable(
    pg_engine: AsyncEngine,
) -> None:
    async with pg_engine.connect() as conn:
        pid = (await conn.execute(select(func.pg_backend_pid()))).scalar_one()
        await conn.commit()
        async with pg_engine.connect() as other:
            await other.execute(select(func.pg_terminate_backend(pid)))
        with pytest.raises(DBAPIError) as raised:
            await conn.run_sync(BY_ID.first, {"p_id": 1})
        assert raised.value.connection_invalidated
        assert isinstance(translate(raised.value, pg_classify), StoreUnavailableError)
    async with pg_engine.connect() as conn:  # the pool opened a new one
        assert await conn.run_sync(BY_ID.first, {"p_id": 1}) is None
