"""Writes racing on one run, event, signal or hook: one outcome wins, nothing is lost.

SQLite runs one write transaction at a time, so these hold there by
construction; on PostgreSQL the writes run in concurrent transactions (one
per call, on a pool of connections) and the statements' locks must keep them
apart.
"""

from __future__ import annotations

import asyncio

from stepd.server.domain import (
    HookStatus,
    PublishOutcome,
    RecordStepStatus,
    RunStatus,
    SignalStatus,
    StepRow,
    SuspendOutcome,
    SuspendStatus,
    WaitKind,
    WaitSpec,
    now_ms,
)
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import SqlStore

from .conftest import new_run
from .test_store_leases import running

ROUNDS = 20


async def test_concurrent_publishes_of_one_event_id_store_it_once(store: SqlStore) -> None:
    for i in range(ROUNDS):
        outcomes = await asyncio.gather(
            *(store.publish_event(f"e{i}", "paid", f'{{"n": {n}}}') for n in range(5))
        )
        assert sorted(o.already_published for o in outcomes) == [False, True, True, True, True]


async def test_concurrent_signals_with_one_request_id_store_one(store: SqlStore) -> None:
    await store.create_run(new_run("r1"))
    for i in range(ROUNDS):
        outcomes = await asyncio.gather(
            *(store.send_signal("r1", "go", str(n), f"req-{i}") for n in range(5))
        )
        statuses = sorted(o.status.value for o in outcomes)
        assert statuses == ["buffered", *["duplicate"] * 4]
    signals = [e for e in await store.run_history("r1") or [] if e.type.value == "signal_received"]
    assert len(signals) == ROUNDS


async def test_concurrent_executions_of_one_hook_deliver_once(store: SqlStore) -> None:
    for i in range(ROUNDS):
        run_id = f"r{i}"
        lease = await running(store, run_id)
        hook = WaitSpec("hook:1", WaitKind.HOOK)
        suspended = await store.suspend_run(run_id, lease, [hook])
        assert suspended.status is SuspendStatus.SUSPENDED
        outcomes = await asyncio.gather(
            *(store.execute_hook(run_id, "hook:1", f"hash-{i}", str(n)) for n in range(5))
        )
        statuses = sorted(o.status.value for o in outcomes)
        assert statuses == [*["already_executed"] * 4, HookStatus.DELIVERED.value]
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.PENDING


async def test_a_signal_racing_a_suspension_is_never_missed(store: SqlStore) -> None:
    for i in range(ROUNDS):
        run_id = f"r{i}"
        lease = await running(store, run_id)
        wait = WaitSpec("signal:go", WaitKind.SIGNAL, target="go")
        suspended, signalled = await asyncio.gather(
            store.suspend_run(run_id, lease, [wait]),
            store.send_signal(run_id, "go", "1", None),
        )
        woke = suspended.status is SuspendStatus.WOKEN or signalled.status is SignalStatus.DELIVERED
        assert woke, (suspended.status, signalled.status)
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.PENDING


async def test_an_event_racing_its_wait_is_never_missed(store: SqlStore) -> None:
    for i in range(ROUNDS):
        run_ids = [f"r{i}-{n}" for n in range(10)]
        leases = [await running(store, run_id) for run_id in run_ids]
        since = now_ms() - 1
        outcomes = await asyncio.gather(
            *(
                store.suspend_run(
                    run_id,
                    lease,
                    [WaitSpec("event:1", WaitKind.EVENT, target=run_id, since_time=since)],
                )
                for run_id, lease in zip(run_ids, leases, strict=True)
            ),
            *(store.publish_event(f"e-{run_id}", run_id, "{}") for run_id in run_ids),
        )
        suspensions, publishes = outcomes[:10], outcomes[10:]
        for suspended, published in zip(suspensions, publishes, strict=True):
            assert isinstance(suspended, SuspendOutcome) and isinstance(published, PublishOutcome)
            woke = suspended.status is SuspendStatus.WOKEN or bool(published.woken)
            assert woke, (suspended.status, published)
        for run_id in run_ids:
            run = await store.get_run(run_id)
            assert run is not None and run.status is RunStatus.PENDING


async def test_a_step_recorded_under_a_lease_reaches_the_next_claim(store: SqlStore) -> None:
    """A step acknowledged as recorded is in the journal of the run's next claim,
    even when the lease is released (and the run claimed again) meanwhile."""
    for i in range(ROUNDS):
        run_id = f"r{i}"
        lease = await running(store, run_id)

        async def release_and_claim(run_id: str = run_id, lease: int = lease) -> list[str]:
            released = await store.release_run(run_id, move(RunEvent.RELEASE), lease)
            assert released is not None
            claimed = await store.claim_run(run_id, "worker-2", 60_000)
            assert claimed is not None
            return [s.step_key for s in claimed.journal]

        recorded, journal = await asyncio.gather(
            store.record_step(run_id, lease, StepRow("a", 1, '"A"')), release_and_claim()
        )
        if recorded.status is RecordStepStatus.RECORDED:
            assert journal == ["a"]
        else:
            assert recorded.status is RecordStepStatus.LEASE_LOST
            assert journal == []


async def test_a_child_ending_while_its_parent_suspends_always_wakes_the_parent(
    store: SqlStore,
) -> None:
    async def end_child(child_id: str, child_lease: int) -> bool:
        ended = await store.complete_run(child_id, move(RunEvent.COMPLETE), child_lease, "1")
        assert ended is not None
        return await store.deliver_child(ended) is not None

    async def race(parent_id: str) -> None:
        child_id = f"{parent_id}/child:1"
        lease = await running(store, parent_id)
        await store.create_run(new_run(child_id, parent_run_id=parent_id, root_run_id=parent_id))
        claimed = await store.claim_run(child_id, "worker-1", 60_000)
        assert claimed is not None
        wait = WaitSpec("child:1", WaitKind.CHILD, target=child_id)
        suspended, delivered = await asyncio.gather(
            store.suspend_run(parent_id, lease, [wait]), end_child(child_id, claimed.run.lease_id)
        )
        assert suspended.status is SuspendStatus.WOKEN or delivered, (suspended.status, delivered)
        parent = await store.get_run(parent_id)
        assert parent is not None and parent.status is RunStatus.PENDING

    for i in range(ROUNDS):
        await asyncio.gather(*(race(f"p{i}-{n}") for n in range(10)))
