"""A worker's runs handed out before a sleep's time go on past it only while
fewer than ``concurrency`` runs go on, first come first served."""

from __future__ import annotations

import asyncio

import pytest

from stepd._early_runs import EarlyRuns


def early_runs(capacity: int) -> tuple[EarlyRuns, set[str]]:
    held: set[str] = set()
    return EarlyRuns(capacity, held.__len__), held


async def test_a_run_that_did_not_arrive_early_goes_on_at_once() -> None:
    runs, held = early_runs(1)
    held.update({"busy", "plain"})
    await asyncio.wait_for(runs.go_on("plain"), 1)


async def test_an_early_run_waits_for_a_free_slot_and_then_counts() -> None:
    runs, held = early_runs(1)
    held.update({"busy", "early"})
    runs.arrived("early")
    assert runs.waits("early") and runs.going_on == 1
    waiting = asyncio.ensure_future(runs.go_on("early"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    held.discard("busy")
    runs.left("busy")
    await asyncio.wait_for(waiting, 1)
    assert not runs.waits("early") and runs.going_on == 1


async def test_early_runs_go_on_in_the_order_they_asked() -> None:
    runs, held = early_runs(1)
    held.update({"busy", "a", "b", "c"})
    for run_id in ("a", "b", "c"):
        runs.arrived(run_id)
    order: list[str] = []

    async def go(run_id: str) -> None:
        await runs.go_on(run_id)
        order.append(run_id)

    tasks = [asyncio.ensure_future(go(run_id)) for run_id in ("b", "a", "c")]
    await asyncio.sleep(0.01)
    tasks[2].cancel()  # "c" was given up while it waited: the session lets it go
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    held.discard("c")
    runs.left("c")
    for done in ("busy", "b", "a"):
        held.discard(done)
        runs.left(done)
        await asyncio.sleep(0.01)
    assert order == ["b", "a"]
    assert runs.going_on == 0


async def test_an_early_run_with_a_free_slot_goes_on_at_once() -> None:
    runs, held = early_runs(2)
    held.update({"busy", "early"})
    runs.arrived("early")
    await asyncio.wait_for(runs.go_on("early"), 1)
    assert runs.going_on == 2


async def test_a_run_that_stops_waiting_for_its_turn_counts_and_leaves_no_turn_behind() -> None:
    runs, held = early_runs(2)
    held.update({"busy-1", "busy-2", "gives-up", "next"})
    runs.arrived("gives-up")
    runs.arrived("next")
    giving_up = asyncio.ensure_future(runs.go_on("gives-up"))
    await asyncio.sleep(0.01)
    giving_up.cancel()  # e.g. its code stopped waiting for the sleep
    with pytest.raises(asyncio.CancelledError):
        await giving_up
    assert not runs.waits("gives-up") and runs.going_on == 3
    for busy in ("busy-1", "busy-2"):
        held.discard(busy)
        runs.left(busy)
    # A slot is free: the turn given up does not keep the next run waiting.
    await asyncio.wait_for(runs.go_on("next"), 1)
