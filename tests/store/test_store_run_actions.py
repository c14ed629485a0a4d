"""retry_run, fork_run, delete_run and delete_expired_runs on both backends."""

from __future__ import annotations

import sqlite3

import asyncpg

from stepd.server.domain import (
    ErrorDetails,
    FailureReason,
    HistoryType,
    RunFilter,
    RunStatus,
    StepRow,
    WaitKind,
    WaitSpec,
    now_ms,
)
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import SqlStore
from stepd.server.store.run_actions import (
    DeadlineChange,
    DeleteStatus,
    ForkStatus,
    RetryStatus,
)

from .conftest import new_run
from .test_store_leases import running

BROKEN = ErrorDetails("builtins.RuntimeError", "broken", step_key="b", attempt=2)


async def failed_in_b(store: SqlStore, run_id: str) -> None:
    """A run that recorded step a, failed attempt 1 of b, then failed with b's attempt 2."""
    lease = await running(store, run_id)
    await store.record_step(run_id, lease, StepRow("a", 1, result_json="1"))
    first = ErrorDetails("builtins.RuntimeError", "broken", step_key="b", attempt=1)
    await store.record_step(run_id, lease, StepRow("b", 1, error=first, attempt_only=True))
    await store.record_step(run_id, lease, StepRow("b", 2, error=BROKEN))
    await store.send_signal(run_id, "go", "1", None)
    failed = await store.fail_run(
        run_id, move(RunEvent.FAIL), BROKEN, FailureReason.WORKFLOW_ERROR, lease_id=lease
    )
    assert failed is not None


async def count(database: str, table: str, run_id: str) -> int:
    """Rows of ``table`` for ``run_id``, read apart from the store."""
    query = f"SELECT count(*) FROM {table} WHERE run_id = "
    if "://" not in database:
        with sqlite3.connect(database) as conn:
            return int(conn.execute(query + "?", (run_id,)).fetchone()[0])
    conn = await asyncpg.connect(database)
    try:
        return int(await conn.fetchval(query + "$1", run_id))
    finally:
        await conn.close()


async def test_retry_keeps_the_journal_but_the_failed_step_and_keeps_the_failure_in_history(
    store: SqlStore,
) -> None:
    await failed_in_b(store, "r1")
    outcome = await store.retry_run(
        "r1", move(RunEvent.RETRY), DeadlineChange(), reason="fixed", actor="key-1"
    )
    assert outcome.status is RetryStatus.RETRIED and outcome.run is not None
    run = outcome.run
    assert run.status is RunStatus.PENDING and run.error is None and run.end_time is None
    assert run.retry_count == 1
    claimed = await store.claim_run("r1", "worker-2", 60_000)
    assert claimed is not None
    assert [(s.step_key, s.attempt_only) for s in claimed.journal] == [("a", False)]
    entries = await store.run_history("r1")
    assert entries is not None
    kinds = [(e.type, e.key) for e in entries]
    assert (HistoryType.STEP_FAILED, "b") in kinds
    assert kinds.count((HistoryType.STEP_FAILED, "b")) == 2
    failed = [e for e in entries if e.type is HistoryType.FAILED]
    assert failed[0].error is not None and failed[0].error.message == "broken"
    retried = [e for e in entries if e.type is HistoryType.RETRIED]
    assert [(e.detail, e.actor) for e in retried] == [("retried from failed: fixed", "key-1")]
    # Not twice: it is running now.
    again = await store.retry_run("r1", move(RunEvent.RETRY), DeadlineChange())
    assert again.status is RetryStatus.WRONG_STATUS


async def test_retry_refuses_a_passed_deadline_unless_replaced(store: SqlStore) -> None:
    await store.create_run(new_run("r1", deadline=now_ms() - 1000))
    await store.cancel_run("r1", move(RunEvent.CANCEL), "stop")
    kept = await store.retry_run("r1", move(RunEvent.RETRY), DeadlineChange())
    assert kept.status is RetryStatus.DEADLINE_PASSED
    later = now_ms() + 60_000
    replaced = await store.retry_run(
        "r1", move(RunEvent.RETRY), DeadlineChange(keep=False, deadline=later)
    )
    assert replaced.run is not None and replaced.run.deadline == later
    assert replaced.run.expire_time == later
    missing = await store.retry_run("nope", move(RunEvent.RETRY), DeadlineChange())
    assert missing.status is RetryStatus.NOT_FOUND


async def test_fork_copies_the_journal_up_to_and_including_the_step(store: SqlStore) -> None:
    lease = await running(store, "r1")
    for key in ("a", "b", "c"):
        await store.record_step("r1", lease, StepRow(key, 1, result_json=f'"{key}"'))
    outcome = await store.fork_run("r1", "b", new_run("f1"), actor="key-2")
    assert outcome.status is ForkStatus.FORKED and outcome.run is not None
    assert outcome.run.forked_from_run_id == "r1" and outcome.run.forked_from_step_key == "b"
    claimed = await store.claim_run("f1", "worker-1", 60_000)
    assert claimed is not None
    assert [s.step_key for s in claimed.journal] == ["a", "b"]
    assert claimed.run.lease_id > lease  # its own entries sort after the copies
    assert (await store.fork_run("r1", "zzz", new_run("f2"))).status is ForkStatus.NO_STEP
    assert (await store.fork_run("nope", "a", new_run("f3"))).status is ForkStatus.NOT_FOUND
    assert (await store.fork_run("r1", "a", new_run("f1"))).status is ForkStatus.ID_TAKEN
    original = await store.run_history("r1")
    assert original is not None
    assert [(e.detail, e.actor) for e in original if e.type is HistoryType.FORKED] == [
        ("f1", "key-2")
    ]


async def test_delete_run_removes_every_row_of_a_finished_run(
    store: SqlStore, database: str
) -> None:
    await failed_in_b(store, "r1")
    lease = await running(store, "r2")
    await store.suspend_run("r2", lease, [WaitSpec("sleep", WaitKind.TIMER, now_ms() + 60_000)])
    status, _ = await store.delete_run("r2")
    assert status is DeleteStatus.NOT_FINISHED
    status, was = await store.delete_run("r1")
    assert (status, was) == (DeleteStatus.DELETED, RunStatus.FAILED)
    for table in ("runs", "steps", "step_attempts", "run_waits", "signals", "run_events"):
        assert await count(database, table, "r1") == 0, table
    assert await count(database, "run_waits", "r2") == 1
    assert (await store.delete_run("r1"))[0] is DeleteStatus.NOT_FOUND


async def test_delete_expired_runs_takes_only_finished_runs_that_ended_before(
    store: SqlStore,
) -> None:
    for i in range(5):
        await failed_in_b(store, f"old{i}")
    await store.create_run(new_run("pending"))
    cutoff = now_ms() + 1
    await failed_in_b(store, "late")  # may end in the same millisecond: not counted below
    assert await store.delete_expired_runs(cutoff, 3) == 3
    assert await store.delete_expired_runs(cutoff, 3) == 2
    assert await store.delete_expired_runs(cutoff, 3) == 0
    left = await store.matching_runs(RunFilter(), None, 100)
    assert sorted(run_id for _, run_id in left) == ["late", "pending"]
    assert await store.count_matching_runs(RunFilter(statuses=frozenset({RunStatus.PENDING}))) == 1
