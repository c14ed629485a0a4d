"""SQLite engine setup, open_store, persistence and the hot path's query plans."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import OperationalError

from stepd.server.domain import (
    ConcurrencySpec,
    RecordStepStatus,
    RunFilter,
    RunStatus,
    StepRow,
    now_ms,
)
from stepd.server.domain_flow import DebounceSpec, FlowSettings
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import SqlStore, open_store

from .conftest import new_run

pytestmark = pytest.mark.sqlite_only


def pragma(name: str) -> Any:
    def op(conn: Connection) -> Any:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

    return op


async def test_writer_pragmas_default_to_full(store: SqlStore) -> None:
    submit = store.committer.submit
    assert await submit(pragma("journal_mode")) == "wal"
    assert await submit(pragma("synchronous")) == 2  # FULL
    assert await submit(pragma("foreign_keys")) == 1
    assert await submit(pragma("busy_timeout")) == 5000


async def test_synchronous_normal(db_path: Path) -> None:
    store = await open_store(str(db_path), synchronous="normal")
    try:
        assert await store.committer.submit(pragma("synchronous")) == 1  # NORMAL
    finally:
        await store.close()


async def test_readers_are_read_only(store: SqlStore) -> None:
    def check() -> None:
        with store.reader_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            with pytest.raises(OperationalError, match="readonly"):
                conn.exec_driver_sql("DELETE FROM runs")

    await asyncio.to_thread(check)


async def test_write_transactions_take_the_write_lock_at_begin(
    store: SqlStore, db_path: Path
) -> None:
    """A batch that has only read so far already blocks other writers (BEGIN IMMEDIATE)."""
    started, release = threading.Event(), threading.Event()

    def read_then_wait(conn: Connection) -> int:
        count = int(conn.execute(text("SELECT count(*) FROM runs")).scalar_one())
        started.set()
        release.wait(timeout=10)
        return count

    op = asyncio.create_task(store.committer.submit(read_then_wait))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            # ... while readers still read (WAL).
            assert other.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        finally:
            other.close()
    finally:
        release.set()
    assert await op == 0


async def test_reopening_keeps_everything(db_path: Path) -> None:
    store = await open_store(str(db_path))
    await store.create_run(new_run("r1", idempotency_key="k"))
    claimed = await store.claim_run("r1", "w", 5)
    assert claimed is not None
    await store.record_step("r1", claimed.run.lease_id, StepRow("a", 1, '"A"'))
    await store.register_workflows([("orders", "v1")])
    run = await store.get_run("r1")
    journal = await store.load_journal("r1")
    await store.close()

    reopened = await open_store(f"sqlite:///{db_path}")
    try:
        assert await reopened.get_run("r1") == run
        assert await reopened.load_journal("r1") == journal
        assert [(v.name, v.version) for v in await reopened.workflow_versions()] == [
            ("orders", "v1")
        ]
        again = await reopened.create_run(new_run("r2", idempotency_key="k"))
        assert not again.created and again.run == run
        assert run is not None
        second = await reopened.create_run(new_run("r3"))
        assert second.run.seq > run.seq
        dup = await reopened.record_step("r1", claimed.run.lease_id, StepRow("a", 1, '"X"'))
        assert dup.status is RecordStepStatus.DUPLICATE
    finally:
        await reopened.close()


@pytest.mark.parametrize("prefix", ["", "sqlite:///", "sqlite+aiosqlite:///"])
async def test_open_store_accepts_paths_and_urls(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "x.db"
    store = await open_store(f"{prefix}{path}")
    await store.close()
    assert await asyncio.to_thread(path.exists)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+psycopg://u@h/db", "through asyncpg"),
        ("postgresql://u@h", "names no database"),
        ("postgresql://u@h:port/db", "not a valid PostgreSQL URL"),
        (":memory:", "database file path"),
        ("sqlite://", "sqlite:///"),
        ("", "database file path"),
        ("/no/such/dir/stepd.db", "directory"),
    ],
)
async def test_open_store_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await open_store(url)


async def test_open_store_rejects_an_empty_postgres_pool() -> None:
    with pytest.raises(ValueError, match="pool size"):
        await open_store("postgresql://u@h/db", pool_size=0)


async def test_open_store_rejects_unknown_synchronous(db_path: Path) -> None:
    with pytest.raises(ValueError, match="FULL, NORMAL"):
        await open_store(str(db_path), synchronous="OFF")
    assert not await asyncio.to_thread(db_path.exists)


# -- query plans ----------------------------------------------------------------


def full_scans(db_path: Path, statements: list[tuple[str, Any]]) -> list[str]:
    """Return the EXPLAIN QUERY PLAN lines that scan a table instead of searching it."""
    db = sqlite3.connect(db_path)
    try:
        scans = []
        for sql, params in statements:
            if not sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
                continue
            for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params):
                detail = row[-1]
                if detail.startswith("SCAN") and "CONSTANT ROW" not in detail:
                    scans.append(f"{detail}  <-  {sql}")
        return scans
    finally:
        db.close()


async def test_hot_path_never_scans_a_table(store: SqlStore, db_path: Path) -> None:
    for i in range(20):  # some data, so the planner has a choice
        await store.create_run(new_run(f"seed{i}", idempotency_key=f"seed{i}"))
    statements: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statements.append((args[2], args[3]))

    event.listen(store.writer_engine, "before_cursor_execute", capture)
    try:
        await store.create_run(new_run("r1", idempotency_key="k"))
        await store.create_run(new_run("r2", idempotency_key="k"))  # key hit
        claimed = await store.claim_run("r1", "w", 5)
        assert claimed is not None
        lease = claimed.run.lease_id
        await store.record_step("r1", lease, StepRow("a", 1, "1"))
        await store.record_step("r1", lease, StepRow("a", 1, "1"))  # duplicate
        await store.record_step("r1", lease + 1, StepRow("b", 1, "1"))  # lease lost
        await store.release_run("r1", move(RunEvent.RELEASE), lease)
        await store.claim_run("r1", "w", 5)  # re-claim loads the journal
        await store.complete_run("r1", move(RunEvent.COMPLETE), lease + 1, "1")
    finally:
        event.remove(store.writer_engine, "before_cursor_execute", capture)

    assert len(statements) >= 10
    assert full_scans(db_path, statements) == []


async def test_filtered_lists_use_indexes(store: SqlStore, db_path: Path) -> None:
    statements: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statements.append((args[2], args[3]))

    event.listen(store.reader_engine, "before_cursor_execute", capture)
    try:
        await store.list_runs(RunFilter(workflow_name="orders"), 10, 100)
        await store.list_runs(RunFilter(parent_run_id="p"), 10, None)
        await store.list_runs(RunFilter(statuses=frozenset({RunStatus.RUNNING})), 10, None)
        await store.runs_in_status([RunStatus.RUNNING, RunStatus.SUSPENDED])
        await store.load_journal("r1")
        await store.get_run("r1")
    finally:
        event.remove(store.reader_engine, "before_cursor_execute", capture)

    assert len(statements) == 6
    assert full_scans(db_path, statements) == []


def plan_lines(db_path: Path, statements: list[tuple[str, Any]], word: str) -> list[str]:
    """The EXPLAIN QUERY PLAN lines of the statements whose WHERE clause holds ``word``."""
    db = sqlite3.connect(db_path)
    try:
        return [
            f"{row[-1]}  <-  {sql}"
            for sql, params in statements
            if word in sql.partition("WHERE")[2].partition("RETURNING")[0]
            and sql.lstrip().upper().startswith(("SELECT", "UPDATE"))
            for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        ]
    finally:
        db.close()


async def test_flow_control_reads_only_a_keys_open_runs(store: SqlStore, db_path: Path) -> None:
    """A concurrency key's count and a debounce key's lookup go through partial
    indexes of open runs, so a key's ended runs (however many) are never read."""
    limit = ConcurrencySpec(name="per-customer", key_path="customer", limit=1)
    assert await store.declare_concurrency({"orders": limit}, now_ms()) is None
    later = FlowSettings(debounce=DebounceSpec(key_path="user", period_ms=60_000))
    await store.declare_flow({"search": later}, now_ms())
    for i in range(30):  # a key's history: ended runs the queries must not read
        run = await store.create_run(new_run(f"old{i}", input_json='{"customer": "c"}'))
        claimed = await store.claim_run(run.run.run_id, "w", 5)
        assert claimed is not None
        await store.complete_run(run.run.run_id, move(RunEvent.COMPLETE), claimed.run.lease_id, "1")
    statements: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statements.append((args[2], args[3]))

    event.listen(store.writer_engine, "before_cursor_execute", capture)
    try:
        await store.create_run(new_run("now1", input_json='{"customer": "c"}'))
        await store.create_run(new_run("now2", input_json='{"customer": "c"}'))  # waits
        await store.check_concurrency_key("per-customer", "c", now_ms())
        for i in range(2):  # the second folds into the first
            await store.create_run(
                new_run(f"s{i}", workflow_name="search", input_json='{"user": "u"}')
            )
    finally:
        event.remove(store.writer_engine, "before_cursor_execute", capture)

    concurrency = plan_lines(db_path, statements, "concurrency_key")
    debounce = plan_lines(db_path, statements, "debounce_key")
    assert concurrency and debounce
    for line in concurrency:
        assert "INDEX ix_runs_concurrency " in line or line.startswith("USE TEMP"), line
    for line in debounce:
        assert "INDEX ix_runs_workflow_name_debounce_key " in line, line
    assert not [line for line in concurrency + debounce if "TEMP B-TREE FOR ORDER BY" in line]
