"""Group commit: batching, failure isolation, durability of answers, draining."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from stepd.server.domain import RecordStepStatus, StepRow
from stepd.server.store import SqlStore, StoreValueError
from stepd.server.store.group_commit import GroupCommitter
from stepd.server.store.schema import steps, workflow_versions
from stepd.server.store.sqlite import create_writer_engine

from .conftest import new_run

pytestmark = pytest.mark.sqlite_only


def group_committer(store: SqlStore) -> GroupCommitter:
    """The store's group committer (SQLite)."""
    assert isinstance(store.committer, GroupCommitter)
    return store.committer


class Boom(Exception):
    pass


def add_version(name: str) -> Callable[[Connection], str]:
    def op(conn: Connection) -> str:
        conn.execute(insert(workflow_versions).values(name=name, version="v", first_seen=1))
        return name

    return op


def add_version_then_fail(name: str) -> Callable[[Connection], str]:
    def op(conn: Connection) -> str:
        conn.execute(insert(workflow_versions).values(name=name, version="v", first_seen=1))
        raise Boom(name)

    return op


async def stored_names(store: SqlStore) -> set[str]:
    return {v.name for v in await store.workflow_versions()}


async def test_concurrent_record_steps_share_few_commits(store: SqlStore) -> None:
    await store.create_run(new_run("r1"))
    claimed = await store.claim_run("r1", "w", 1)
    assert claimed is not None
    commits_before = group_committer(store).commits

    outcomes = await asyncio.gather(
        *(
            store.record_step("r1", claimed.run.lease_id, StepRow(f"s{i}", 1, str(i)))
            for i in range(200)
        )
    )

    assert all(o.status is RecordStepStatus.RECORDED for o in outcomes)
    commits = group_committer(store).commits - commits_before
    assert 1 <= commits <= 10, commits
    journal = await store.load_journal("r1")
    assert sorted(s.step_key for s in journal) == sorted(f"s{i}" for i in range(200))


async def test_a_lone_write_commits_at_once(store: SqlStore) -> None:
    before = group_committer(store).commits
    await asyncio.wait_for(store.register_workflows([("a", "v1")]), timeout=1)
    assert group_committer(store).commits == before + 1


async def test_a_failing_op_fails_only_its_caller(store: SqlStore) -> None:
    committer = group_committer(store)
    ops = [add_version(f"ok{i}") for i in range(30)]
    ops.insert(10, add_version_then_fail("bad"))

    results = await asyncio.gather(
        *(committer.submit(op) for op in ops),
        return_exceptions=True,
    )

    assert committer.stats.largest_batch >= len(ops)  # they really shared a batch
    assert committer.stats.batches_retried == 1
    assert isinstance(results[10], Boom)
    assert [r for i, r in enumerate(results) if i != 10] == [f"ok{i}" for i in range(30)]
    assert await stored_names(store) == {f"ok{i}" for i in range(30)}


async def test_a_failing_commit_fails_only_its_caller(store: SqlStore) -> None:
    """A deferred foreign-key violation only fails at COMMIT; its caller alone gets it."""

    def orphan_step(conn: Connection) -> None:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        conn.execute(insert(steps).values(run_id="missing", step_key="k", attempt=1, record_time=1))

    ops = [add_version(f"ok{i}") for i in range(10)]
    results = await asyncio.gather(
        *(group_committer(store).submit(op) for op in ops),
        group_committer(store).submit(orphan_step),
        return_exceptions=True,
    )

    assert isinstance(results[-1], StoreValueError)  # the database refused it
    assert isinstance(results[-1].__cause__, IntegrityError)
    assert results[:-1] == [f"ok{i}" for i in range(10)]
    assert await stored_names(store) == {f"ok{i}" for i in range(10)}
    assert await store.load_journal("missing") == []


async def test_answers_come_only_after_the_commit(store: SqlStore) -> None:
    """Every acknowledged write is visible to a new connection when its caller resumes."""
    await store.create_run(new_run("r1"))
    claimed = await store.claim_run("r1", "w", 1)
    assert claimed is not None

    async def record_and_check(i: int) -> bool:
        await store.record_step("r1", claimed.run.lease_id, StepRow(f"s{i}", 1, "1"))
        journal = await store.load_journal("r1")  # reader pool: sees committed data only
        return f"s{i}" in {s.step_key for s in journal}

    assert all(await asyncio.gather(*(record_and_check(i) for i in range(50))))


async def test_a_broken_writer_connection_is_replaced(store: SqlStore) -> None:
    def break_connection(conn: Connection) -> None:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.close()
        raise Boom("connection gone")

    with pytest.raises(Boom):
        await group_committer(store).submit(break_connection)

    await store.register_workflows([("after", "v")])
    assert await stored_names(store) == {"after"}


async def test_batches_are_capped(tmp_path: Path) -> None:
    engine = create_writer_engine(tmp_path / "cap.db")
    committer = GroupCommitter(engine, max_batch=7)
    await committer.start()
    try:

        def create(conn: Connection) -> None:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))

        await committer.submit(create)

        def add(i: int) -> Callable[[Connection], int]:
            def op(conn: Connection) -> int:
                conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
                return i

            return op

        results = await asyncio.gather(*(committer.submit(add(i)) for i in range(50)))

        def count(conn: Connection) -> int:
            return int(conn.execute(text("SELECT count(*) FROM t")).scalar_one())

        assert results == list(range(50))
        assert await committer.submit(count) == 50
        assert committer.stats.largest_batch == 7
        assert committer.commits >= 1 + 50 // 7
    finally:
        await committer.close()
        engine.dispose()


async def test_a_cancelled_caller_does_not_break_the_writer(store: SqlStore) -> None:
    task = asyncio.create_task(store.register_workflows([("gone", "v")]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.register_workflows([("kept", "v")])
    assert "kept" in await stored_names(store)


async def test_ops_see_each_others_writes_in_a_batch(store: SqlStore) -> None:
    """Writes in one batch run in submission order on one connection."""

    def count(conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(workflow_versions)).scalar_one())

    results = await asyncio.gather(
        group_committer(store).submit(add_version("a")),
        group_committer(store).submit(count),
        group_committer(store).submit(add_version("b")),
        group_committer(store).submit(count),
    )
    assert results == ["a", 1, "b", 2]
