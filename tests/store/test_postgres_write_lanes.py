"""PostgreSQL group commit: writes share transactions, failures stay with their
caller, and a batch that waits for a lock gives way (skipped without PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from itertools import pairwise

import pytest
from sqlalchemy import Connection, event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from stepd.server.store import SqlStore, open_store
from stepd.server.store.dialects import lock_run
from stepd.server.store.postgres import (
    BATCH_LOCK_TIMEOUT_MS,
    WRITE_LANES,
    PostgresExecutor,
    async_url,
)
from stepd.server.store.schema import runs, workflow_versions

from .conftest import new_run


class Boom(Exception):
    pass


@pytest.fixture
async def pg_store(pg_database: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(pg_database)
    yield opened
    await opened.close()


def executor(store: SqlStore) -> PostgresExecutor:
    assert isinstance(store.committer, PostgresExecutor)
    return store.committer


def add_version(name: str, *, fail: bool = False) -> Callable[[Connection], str]:
    def op(conn: Connection) -> str:
        conn.execute(insert(workflow_versions).values(name=name, version="v", first_seen=1))
        if fail:
            raise Boom(name)
        return name

    return op


def hold_lane(seconds: float) -> Callable[[Connection], None]:
    """A write that keeps its transaction (its lane) busy for a while."""

    def op(conn: Connection) -> None:
        conn.execute(select(func.pg_sleep(seconds)))

    return op


def rename_run(run_id: str, name: str) -> Callable[[Connection], str]:
    """A write that takes the run's row lock first, as the store's writes do."""

    def op(conn: Connection) -> str:
        lock_run(conn, run_id)
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(workflow_name=name))
        return name

    return op


async def stored_names(store: SqlStore) -> set[str]:
    return {v.name for v in await store.workflow_versions()}


async def test_concurrent_writes_share_transactions(pg_store: SqlStore) -> None:
    stats = executor(pg_store).stats
    commits_before, ops_before = stats.commits, stats.ops

    created = await asyncio.gather(*(pg_store.create_run(new_run(f"r{i}")) for i in range(100)))

    assert all(c.created for c in created)
    assert stats.ops - ops_before == 100
    assert stats.commits - commits_before <= 20, stats.commits - commits_before
    assert stats.largest_batch > 1
    assert all([await pg_store.get_run(f"r{i}") for i in range(100)])


async def test_a_failing_write_fails_only_its_caller(pg_store: SqlStore) -> None:
    committer = executor(pg_store)
    # Keep every lane busy so that the writes below queue up and share a batch.
    lanes = [asyncio.create_task(committer.submit(hold_lane(0.3))) for _ in range(WRITE_LANES)]
    await asyncio.sleep(0.05)
    ops = [add_version(f"ok{i}") for i in range(20)]
    ops.insert(7, add_version("bad", fail=True))

    results = await asyncio.gather(*(committer.submit(op) for op in ops), return_exceptions=True)
    await asyncio.gather(*lanes)

    assert committer.stats.largest_batch >= len(ops)  # they really shared a batch
    assert committer.stats.batches_retried == 1
    assert isinstance(results[7], Boom)
    assert [r for i, r in enumerate(results) if i != 7] == [f"ok{i}" for i in range(20)]
    assert await stored_names(pg_store) == {f"ok{i}" for i in range(20)}


async def test_a_batch_waiting_for_a_lock_gives_way(pg_store: SqlStore, pg_database: str) -> None:
    """A batch that would wait for a lock rolls back after the lock timeout and
    runs its writes one by one: the writes that need no lock are not held up
    by the one that does (nor by a deadlock between batches)."""
    await pg_store.create_run(new_run("locked"))
    committer = executor(pg_store)
    other = create_async_engine(async_url(pg_database))
    try:
        async with other.connect() as holder:
            await holder.execute(text("BEGIN"))
            await holder.execute(
                text("SELECT run_id FROM runs WHERE run_id = :id FOR UPDATE").bindparams(
                    id="locked"
                )
            )
            lanes = [
                asyncio.create_task(committer.submit(hold_lane(0.2))) for _ in range(WRITE_LANES)
            ]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            blocked = asyncio.create_task(committer.submit(rename_run("locked", "renamed")))
            free = [asyncio.create_task(committer.submit(add_version(f"f{i}"))) for i in range(5)]

            await asyncio.wait_for(asyncio.gather(*free), timeout=5)
            waited = time.monotonic() - started
            assert not blocked.done()  # still waiting for the lock, alone now
            await holder.execute(text("COMMIT"))
        assert await asyncio.wait_for(blocked, timeout=5) == "renamed"
        await asyncio.gather(*lanes)
    finally:
        await other.dispose()

    assert committer.stats.batches_retried == 1
    assert waited < 0.2 + BATCH_LOCK_TIMEOUT_MS / 1000 + 1.0
    run = await pg_store.get_run("locked")
    assert run is not None and run.workflow_name == "renamed"
    assert await stored_names(pg_store) == {f"f{i}" for i in range(5)}


async def test_a_cancelled_caller_does_not_stop_the_lanes(pg_store: SqlStore) -> None:
    committer = executor(pg_store)
    lanes = [asyncio.create_task(committer.submit(hold_lane(0.2))) for _ in range(WRITE_LANES)]
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(committer.submit(add_version("gone")))
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.gather(*lanes)
    await committer.submit(add_version("kept"))
    assert await stored_names(pg_store) == {"kept"}  # a write still queued is dropped


async def test_a_batch_reads_what_workflows_declared_once(pg_store: SqlStore) -> None:
    """Runs inserted in one batch share one read of their workflow's flow settings
    and concurrency limit; writes outside a batch read them each time."""
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    def declaration_reads() -> int:
        return sum("FROM workflow_flow" in s or "FROM concurrency_limits" in s for s in statements)

    engine = executor(pg_store).engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        committer = executor(pg_store)
        lanes = [asyncio.create_task(committer.submit(hold_lane(0.2))) for _ in range(WRITE_LANES)]
        await asyncio.sleep(0.05)
        await asyncio.gather(*(pg_store.create_run(new_run(f"b{i}")) for i in range(10)))
        await asyncio.gather(*lanes)
        in_batch = declaration_reads()
        statements.clear()
        await pg_store.create_run(new_run("alone1"))
        await pg_store.create_run(new_run("alone2"))
        alone = declaration_reads()
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert committer.stats.largest_batch >= 10
    assert 1 <= in_batch <= 2, in_batch  # each kind once for the batch
    assert alone == 2 * in_batch  # each write of its own reads them again


async def test_writes_about_one_run_run_in_order_never_side_by_side(pg_store: SqlStore) -> None:
    """Both lanes are used, yet the writes of one key never overlap and keep
    their order (a failed batch runs them one after another too)."""
    committer = executor(pg_store)
    events: list[tuple[str, str, int]] = []

    def step(key: str, index: int, *, fail: bool = False) -> Callable[[Connection], int]:
        def op(conn: Connection) -> int:
            events.append(("start", key, index))
            conn.execute(select(func.pg_sleep(0.02)))
            events.append(("end", key, index))
            if fail:
                raise Boom(key)
            return index

        return op

    calls = []
    for index in range(6):
        for key in ("a", "b"):
            calls.append(committer.submit(step(key, index, fail=(key, index) == ("b", 3)), key))
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert isinstance(results[7], Boom)
    assert committer.stats.batches_retried >= 1
    for key in ("a", "b"):
        mine = [(kind, index) for kind, k, index in events if k == key]
        # each write ends before the next of its key starts (a batch rolled back
        # and run again adds its writes again, still in order)
        for (kind, index), (next_kind, next_index) in pairwise(mine):
            if kind == "start":
                assert (next_kind, next_index) == ("end", index), mine
            else:
                assert next_kind == "start" and next_index <= index + 1, mine
        assert [index for kind, index in mine if kind == "end"][-1] == 5
    overlapping = any(  # the two keys did share the lanes side by side
        kind == "start" and k != events[i - 1][1] and events[i - 1][0] == "start"
        for i, (kind, k, _) in enumerate(events)
        if i
    )
    assert overlapping
