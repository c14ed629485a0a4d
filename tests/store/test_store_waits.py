"""suspend_run, fire_timer and due_timers: the waits of suspended runs."""

from __future__ import annotations

import time
from unittest.mock import ANY

from stepd.server.domain import RunStatus, SignalStatus, SuspendStatus, WaitKind, WaitSpec
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import SqlStore

from .test_store_leases import running


def timer(key: str, at: int) -> WaitSpec:
    return WaitSpec(key, WaitKind.TIMER, at)


async def test_suspend_fire_and_journal(store: SqlStore) -> None:
    lease = await running(store, "r1")
    outcome = await store.suspend_run("r1", lease, [timer("sleep", 5_000)])
    assert outcome.status is SuspendStatus.SUSPENDED
    assert outcome.run is not None and outcome.run.status is RunStatus.SUSPENDED
    assert [(t.wait_key, t.fire_time) for t in outcome.timers] == [("sleep", 5_000)]
    assert [t.run_id for t in await store.due_timers(until=5_000, limit=10)] == ["r1"]
    assert await store.due_timers(until=4_999, limit=10) == []

    woken = await store.fire_timer("r1", "sleep")
    assert woken is not None and woken.status is RunStatus.PENDING
    assert await store.fire_timer("r1", "sleep") is None  # fires once
    assert await store.due_timers(until=10_000, limit=10) == []
    claimed = await store.claim_run("r1", "worker-2", 60_000)
    assert claimed is not None
    assert [w.wait_key for w in claimed.waits] == ["sleep"]
    assert claimed.waits[0].met_time > 0


async def test_a_timer_met_early_is_met_at_its_time_and_only_when_alone(store: SqlStore) -> None:
    later = int(time.time() * 1000) + 60_000
    lease = await running(store, "r1")
    await store.suspend_run("r1", lease, [timer("sleep:1", later), timer("sleep:2", later)])
    # Two open waits: the other could still come first, so neither is met early.
    assert await store.fire_timer_early("r1", "sleep:1") == (False, None)
    await store.fire_timer("r1", "sleep:2")  # met now: the run wakes
    claimed = await store.claim_run("r1", "w", 60_000)
    assert claimed is not None
    await store.suspend_run("r1", claimed.run.lease_id, [timer("sleep:1", later)])

    met, woken = await store.fire_timer_early("r1", "sleep:1")
    assert met and woken is not None and woken.status is RunStatus.PENDING
    assert await store.fire_timer_early("r1", "sleep:1") == (False, None)  # once
    assert await store.fire_timer("r1", "sleep:1") is None
    again = await store.claim_run("r1", "w", 60_000)
    assert again is not None
    # Met at its time, which is still ahead: the worker waits until then.
    assert [(w.wait_key, w.met_time) for w in again.waits] == [("sleep:2", ANY), ("sleep:1", later)]


async def test_a_wait_keeps_its_first_fire_time(store: SqlStore) -> None:
    lease = await running(store, "r1")
    await store.suspend_run("r1", lease, [timer("sleep", 5_000), timer("other", 9_000)])
    # Woken by "other"; the workflow replays and suspends on "sleep" again,
    # computing a later time: the stored one stands.
    await store.fire_timer("r1", "other")
    claimed = await store.claim_run("r1", "w", 60_000)
    assert claimed is not None
    again = await store.suspend_run("r1", claimed.run.lease_id, [timer("sleep", 7_000)])
    assert [(t.wait_key, t.fire_time) for t in again.timers] == [("sleep", 5_000)]


async def test_first_wait_met_abandons_the_others(store: SqlStore) -> None:
    lease = await running(store, "r1")
    await store.suspend_run("r1", lease, [timer("a", 1_000), timer("b", 2_000)])
    await store.fire_timer("r1", "a")
    claimed = await store.claim_run("r1", "w", 60_000)
    assert claimed is not None
    assert [w.wait_key for w in claimed.waits] == ["a"]
    # "b" lost the race: it does not fire while the run runs...
    assert await store.fire_timer("r1", "b") is None
    # ...and suspending on it again reopens it with its first time.
    outcome = await store.suspend_run("r1", claimed.run.lease_id, [timer("b", 9_000)])
    assert outcome.status is SuspendStatus.SUSPENDED
    assert [(t.wait_key, t.fire_time) for t in outcome.timers] == [("b", 2_000)]


async def test_a_buffered_signal_wakes_a_suspension_at_once(store: SqlStore) -> None:
    lease = await running(store, "r1")
    sent = await store.send_signal("r1", "approve", '{"ok": true}', None)
    assert sent.status is SignalStatus.BUFFERED
    waits = [WaitSpec("signal:1", WaitKind.SIGNAL, target="approve"), timer("t", 99_000)]
    outcome = await store.suspend_run("r1", lease, waits)
    assert outcome.status is SuspendStatus.WOKEN
    claimed = await store.claim_run("r1", "w", 60_000)
    assert claimed is not None
    assert [(w.wait_key, w.payload_json) for w in claimed.waits] == [("signal:1", '{"ok": true}')]
    assert await store.due_timers(until=100_000, limit=10) == []  # "t" was abandoned


async def test_signals_go_one_per_wait_in_order(store: SqlStore) -> None:
    lease = await running(store, "r1")
    for n in (1, 2):
        await store.send_signal("r1", "tick", str(n), f"req-{n}")
    duplicate = await store.send_signal("r1", "tick", "1", "req-1")
    assert duplicate.status is SignalStatus.DUPLICATE
    got = []
    for n in (1, 2, 3):
        wait = WaitSpec(f"signal:{n}", WaitKind.SIGNAL, target="tick")
        outcome = await store.suspend_run("r1", lease, [wait])
        if outcome.status is SuspendStatus.SUSPENDED:
            break
        claimed = await store.claim_run("r1", "w", 60_000)
        assert claimed is not None
        lease = claimed.run.lease_id
        got.append(next(w.payload_json for w in claimed.waits if w.wait_key == f"signal:{n}"))
    assert got == ["1", "2"]
    delivered = await store.send_signal("r1", "tick", "3", None)
    assert delivered.status is SignalStatus.DELIVERED
    assert delivered.woken is not None and delivered.woken.status is RunStatus.PENDING


async def test_signal_to_unknown_or_finished_run(store: SqlStore) -> None:
    assert (await store.send_signal("nope", "x", "1", None)).status is SignalStatus.UNKNOWN_RUN
    lease = await running(store, "r1")
    await store.complete_run("r1", move(RunEvent.COMPLETE), lease, "null")
    finished = await store.send_signal("r1", "x", "1", None)
    assert finished.status is SignalStatus.FINISHED_RUN


async def test_abandoned_waits_do_not_fire(store: SqlStore) -> None:
    lease = await running(store, "r1")
    await store.suspend_run("r1", lease, [timer("a", 1_000), timer("b", 50_000)])
    await store.fire_timer("r1", "a")
    claimed = await store.claim_run("r1", "w", 60_000)
    assert claimed is not None
    await store.suspend_run("r1", claimed.run.lease_id, [timer("c", 3_000)])
    assert [t.wait_key for t in await store.due_timers(until=100_000, limit=10)] == ["c"]


async def test_suspend_needs_the_lease(store: SqlStore) -> None:
    lease = await running(store, "r1")
    stale = await store.suspend_run("r1", lease + 1, [timer("s", 1)])
    assert stale.status is SuspendStatus.LEASE_LOST
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING
    assert await store.due_timers(until=10, limit=10) == []


async def test_a_cancelled_run_is_not_woken(store: SqlStore) -> None:
    lease = await running(store, "r1")
    await store.suspend_run("r1", lease, [timer("s", 1)])
    await store.cancel_run("r1", move(RunEvent.CANCEL), "cancelled")
    assert await store.fire_timer("r1", "s") is None
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.CANCELLED
