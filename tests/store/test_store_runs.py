"""create_run, get_run, list_runs, runs_in_status and the workflow registry."""

from __future__ import annotations

import asyncio

import pytest

from stepd.server.clock import SkippingClock
from stepd.server.domain import (
    ErrorDetails,
    HistoryType,
    RunFilter,
    RunStatus,
    StepRow,
    WaitKind,
    WaitSpec,
)
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import RunConflictError, SqlStore, StoreClosedError, open_store

from .conftest import new_run


async def test_create_run_inserts_a_pending_run(store: SqlStore) -> None:
    new = new_run(
        "r1",
        idempotency_key="k1",
        parent_run_id="p",
        root_run_id="root",
        deadline=123,
        start_time_not_before=45,
    )
    outcome = await store.create_run(new)

    assert outcome.created
    run = outcome.run
    assert run.run_id == "r1"
    assert run.seq > 0
    assert run.status is RunStatus.PENDING
    assert (run.workflow_name, run.workflow_version) == ("orders", "v1")
    assert run.input_json == '{"n": 1}'
    assert run.idempotency_key == "k1"
    assert (run.parent_run_id, run.root_run_id) == ("p", "root")
    assert (run.deadline, run.start_time_not_before) == (123, 45)
    assert run.create_time == run.update_time == new.create_time
    assert (run.dispatch_count, run.lease_id, run.lease_owner) == (0, 0, None)
    assert run.start_time is None and run.end_time is None
    assert run.result_json is None and run.error is None and run.failure_reason is None
    assert await store.get_run("r1") == run


async def test_get_run_of_unknown_id_is_none(store: SqlStore) -> None:
    assert await store.get_run("nope") is None


async def test_idempotency_key_returns_the_existing_run(store: SqlStore) -> None:
    first = await store.create_run(new_run("r1", idempotency_key="key"))
    again = await store.create_run(new_run("r2", idempotency_key="key", input_json="{}"))

    assert not again.created
    assert again.run == first.run
    assert await store.get_run("r2") is None


async def test_same_run_id_and_key_returns_the_existing_run(store: SqlStore) -> None:
    first = await store.create_run(new_run("r1", idempotency_key="key"))
    again = await store.create_run(new_run("r1", idempotency_key="key"))
    assert not again.created
    assert again.run == first.run


@pytest.mark.parametrize("key", [None, "other-key"])
async def test_existing_run_id_without_matching_key_conflicts(
    store: SqlStore, key: str | None
) -> None:
    original = (await store.create_run(new_run("r1", idempotency_key="key"))).run

    with pytest.raises(RunConflictError) as caught:
        await store.create_run(new_run("r1", idempotency_key=key, input_json="{}"))

    assert caught.value.run_id == "r1"
    assert await store.get_run("r1") == original
    if key is not None:  # the rejected key was not stored anywhere
        again = await store.create_run(new_run("r2", idempotency_key=key))
        assert again.created


async def test_concurrent_creates_with_one_key_create_one_run(store: SqlStore) -> None:
    outcomes = await asyncio.gather(
        *(store.create_run(new_run(f"r{i}", idempotency_key="same")) for i in range(20))
    )
    created = [o for o in outcomes if o.created]
    assert len(created) == 1
    assert {o.run.run_id for o in outcomes} == {created[0].run.run_id}
    assert len(await store.list_runs(RunFilter(), 100, None)) == 1


async def test_a_conflict_in_a_batch_fails_only_its_caller(store: SqlStore) -> None:
    await store.create_run(new_run("taken"))
    results = await asyncio.gather(
        *(store.create_run(new_run(f"r{i}")) for i in range(10)),
        store.create_run(new_run("taken")),
        return_exceptions=True,
    )
    assert isinstance(results[-1], RunConflictError)
    assert all(not isinstance(r, BaseException) and r.created for r in results[:-1])
    assert len(await store.list_runs(RunFilter(), 100, None)) == 11


async def test_list_runs_newest_first_with_cursor(store: SqlStore) -> None:
    for i in range(7):
        await store.create_run(new_run(f"r{i}"))

    page1 = await store.list_runs(RunFilter(), 3, None)
    page2 = await store.list_runs(RunFilter(), 3, page1[-1].seq)
    page3 = await store.list_runs(RunFilter(), 3, page2[-1].seq)
    page4 = await store.list_runs(RunFilter(), 3, page3[-1].seq)

    ids = [r.run_id for r in page1 + page2 + page3]
    assert ids == [f"r{i}" for i in reversed(range(7))]
    assert len(page3) == 1 and page4 == []
    assert await store.list_runs(RunFilter(), 0, None) == []


async def test_list_runs_filters(store: SqlStore) -> None:
    await store.create_run(new_run("a1", workflow_name="a", create_time=1_000))
    await store.create_run(new_run("a2", workflow_name="a", create_time=2_000, parent_run_id="a1"))
    await store.create_run(new_run("b1", workflow_name="b", create_time=3_000, parent_run_id="a1"))
    await store.create_run(new_run("b2", workflow_name="b", create_time=4_000))
    await store.claim_run("a2", "w", 10)
    await store.claim_run("b2", "w", 10)
    await store.complete_run("b2", move(RunEvent.COMPLETE), 1, "null")

    async def ids(run_filter: RunFilter) -> list[str]:
        return [r.run_id for r in await store.list_runs(run_filter, 100, None)]

    assert await ids(RunFilter(workflow_name="a")) == ["a2", "a1"]
    assert await ids(RunFilter(statuses=frozenset({RunStatus.PENDING}))) == ["b1", "a1"]
    running_or_done = frozenset({RunStatus.RUNNING, RunStatus.COMPLETED})
    assert await ids(RunFilter(statuses=running_or_done)) == ["b2", "a2"]
    assert await ids(RunFilter(parent_run_id="a1")) == ["b1", "a2"]
    assert await ids(RunFilter(create_time_after=2_000)) == ["b2", "b1", "a2"]
    assert await ids(RunFilter(create_time_before=2_000)) == ["a1"]
    assert await ids(RunFilter(create_time_after=2_000, create_time_before=4_000)) == ["b1", "a2"]
    assert await ids(RunFilter(workflow_name="b", statuses=frozenset({RunStatus.PENDING}))) == [
        "b1"
    ]
    assert await ids(RunFilter(workflow_name="zzz")) == []
    assert await ids(RunFilter(statuses=frozenset())) == []


async def test_runs_in_status(store: SqlStore) -> None:
    for run_id in ("r1", "r2", "r3"):
        await store.create_run(new_run(run_id))
    await store.claim_run("r2", "w", 10)
    await store.claim_run("r3", "w", 10)
    await store.suspend_run("r3", 1, [WaitSpec("s", WaitKind.TIMER, 10**15)])

    running = await store.runs_in_status([RunStatus.RUNNING, RunStatus.SUSPENDED])
    assert [r.run_id for r in running] == ["r2", "r3"]
    assert [r.run_id for r in await store.runs_in_status([RunStatus.PENDING])] == ["r1"]
    assert await store.runs_in_status([RunStatus.FAILED]) == []
    assert await store.runs_in_status([]) == []


async def test_register_workflows_keeps_first_seen(store: SqlStore) -> None:
    await store.register_workflows([("b", "v1"), ("a", "v1"), ("a", "v1")])
    first = await store.workflow_versions()
    await asyncio.sleep(0.01)
    await store.register_workflows([("a", "v1"), ("a", "v2")])
    await store.register_workflows([])

    versions = await store.workflow_versions()
    assert [(v.name, v.version) for v in versions] == [("a", "v1"), ("b", "v1"), ("a", "v2")]
    assert versions[:2] == first
    assert versions[2].first_seen > first[0].first_seen


async def test_a_run_that_starts_a_child_is_marked_as_having_children(store: SqlStore) -> None:
    from stepd.server.store.children import StartChildStatus

    from .test_store_leases import running

    lease = await running(store, "parent")
    await running(store, "lonely")
    child = new_run("parent/child:1", parent_run_id="parent")
    stale = await store.start_child("parent", lease + 1, "child:1", child)
    assert stale.status is StartChildStatus.LEASE_LOST
    assert not (await store.get_run("parent")).has_children  # type: ignore[union-attr]
    started = await store.start_child("parent", lease, "child:1", child)
    assert started.status is StartChildStatus.STARTED
    ended = await store.complete_run("parent", move(RunEvent.COMPLETE), lease, "null")
    assert ended is not None and ended.has_children
    assert not (await store.get_run("lonely")).has_children  # type: ignore[union-attr]
    assert not (await store.get_run("parent/child:1")).has_children  # type: ignore[union-attr]


async def test_close_drains_queued_writes(database: str) -> None:
    """Closing finishes every queued write (both backends' group commit)."""
    store = await open_store(database)
    tasks = [asyncio.create_task(store.create_run(new_run(f"r{i}"))) for i in range(100)]
    await asyncio.sleep(0)  # let every task queue its write

    await store.close()

    assert all(t.done() and t.result().created for t in tasks)
    with pytest.raises(StoreClosedError):
        await store.create_run(new_run("late"))
    with pytest.raises(StoreClosedError):
        await store.get_run("r1")
    await store.close()  # closing twice is harmless
    reopened = await open_store(database)
    try:
        assert all([await reopened.get_run(f"r{i}") for i in range(100)])
    finally:
        await reopened.close()


class StillClock(SkippingClock):
    """A clock that stands still: every write falls in the same millisecond."""

    def now_ms(self) -> int:
        return 1_800_000_000_000


async def test_a_steps_failed_attempts_come_before_its_outcome_in_one_millisecond(
    database: str,
) -> None:
    """Failed attempts and outcomes are kept in tables of their own; written in
    the same millisecond, the history still shows them in the order written."""
    store = await open_store(database, clock=StillClock())
    try:
        await store.create_run(new_run("r1"))
        claimed = await store.claim_run("r1", "worker-1", 60_000)
        assert claimed is not None
        lease = claimed.run.lease_id
        for attempt, attempt_only in ((1, True), (2, True), (2, False)):
            error = ErrorDetails(
                "builtins.ValueError", f"no {attempt}", step_key="charge", attempt=attempt
            )
            step = StepRow("charge", attempt, error=error, attempt_only=attempt_only)
            await store.record_step("r1", lease, step)
        history = await store.run_history("r1")
    finally:
        await store.close()

    assert history is not None
    failed = [(e.attempt, e.attempt_only) for e in history if e.type is HistoryType.STEP_FAILED]
    assert failed == [(1, True), (2, True), (2, False)]
