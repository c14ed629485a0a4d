"""A worker session's slots and runs handed out before a sleep's time: such a run
counts against the early capacity, not a slot, until its time, and leaves its slot
to new runs only until shortly before; the dispatcher then hands the free slots to
runs that already started only."""

from __future__ import annotations

import asyncio
import time

from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.sessions import WorkerSession

QUEUE = ("w", "v1")


def session(capacity: int = 1, early_capacity: int = 2) -> WorkerSession:
    return WorkerSession(
        "w1", "w1", frozenset({QUEUE}), capacity=capacity, early_capacity=early_capacity
    )


def handed_out(worker: WorkerSession, run_id: str) -> None:
    worker.reserve(run_id)
    worker.held[run_id] = 7  # claimed under lease 7


def test_a_run_waiting_out_its_sleep_frees_its_slot_until_its_time() -> None:
    worker = session()
    handed_out(worker, "early")
    assert worker.free_slots == 0 and worker.room_for_new == 0
    worker.slot_time = 0.1
    assert worker.wait_out("early", 0.5)
    assert worker.free_slots == 1 and worker.room_for_new == 1 and worker.waiting_out == 1
    # Twice the slot time before its time (0.3 s from now) new runs may not have
    # the slot any more; runs that already started may, until its time.
    time.sleep(0.35)
    assert worker.room_for_new == 0 and worker.free_slots == 1
    time.sleep(0.2)
    assert worker.free_slots == 0 and worker.waiting_out == 0
    assert worker.drop("early") == 7
    assert worker.free_slots == 1 and worker.room_for_new == 1


def test_close_to_its_time_the_slot_is_kept_at_once() -> None:
    worker = session()
    handed_out(worker, "early")
    worker.slot_time = 0.1
    assert worker.wait_out("early", 0.15)
    assert worker.free_slots == 1 and worker.room_for_new == 0


def test_the_early_capacity_bounds_the_runs_waiting_out() -> None:
    worker = session(capacity=3, early_capacity=1)
    for run_id in ("a", "b"):
        handed_out(worker, run_id)
    assert worker.wait_out("a", 5.0)
    assert not worker.wait_out("b", 5.0)  # the early capacity is full
    assert not worker.wait_out("gone", 5.0)  # not held
    assert worker.free_slots == 2
    worker.drop("a")  # ended (or cancelled) while it waited: nothing of it stays
    assert worker.waiting_out == 0 and worker.free_slots == 2
    assert worker.wait_out("b", 5.0)


def test_a_worker_without_early_capacity_counts_every_run_against_a_slot() -> None:
    worker = session(early_capacity=0)
    handed_out(worker, "early")
    assert not worker.wait_out("early", 5.0)
    assert worker.free_slots == 0


def test_the_slot_time_follows_how_long_runs_hold_their_slots() -> None:
    worker = session(capacity=10)
    first = worker.slot_time
    for n in range(40):
        handed_out(worker, f"r{n}")
    time.sleep(0.3)
    for n in range(40):
        worker.drop(f"r{n}")
    assert worker.slot_time > first + 0.1  # held for 0.3 s each
    handed_out(worker, "quick")
    before = worker.slot_time
    worker.drop("quick")
    assert worker.slot_time < before


def test_closing_the_session_drops_its_waiting_runs_too() -> None:
    worker = session(capacity=2)
    handed_out(worker, "early")
    assert worker.wait_out("early", 5.0)
    worker.drop_all()
    assert worker.waiting_out == 0 and not worker.held and worker.free_slots == 2


async def test_a_slot_kept_for_a_run_met_early_goes_to_started_runs_only() -> None:
    claimed: list[str] = []

    async def claim(worker: WorkerSession, run_id: str, served: object, pin: str) -> None:
        claimed.append(run_id)
        worker.held[run_id] = 9

    dispatcher = Dispatcher(claim)
    worker = session(capacity=2)
    handed_out(worker, "early")
    worker.slot_time = 1.0
    assert worker.wait_out("early", 1.0)  # its slot is kept from now on
    dispatcher.push(*QUEUE, "new")
    dispatcher.push(*QUEUE, "woken", resumed=True)
    dispatcher.add_session(worker)
    await asyncio.sleep(0.01)
    # One slot is free for anything: "woken" goes first (a started run). The kept
    # one may go to a started run only: "new" waits.
    assert claimed == ["woken"]
    dispatcher.push(*QUEUE, "woken-too", resumed=True)
    await asyncio.sleep(0.01)
    assert claimed == ["woken", "woken-too"]
    worker.drop("early")
    worker.drop("woken")
    dispatcher.kick()
    await asyncio.sleep(0.01)
    assert claimed == ["woken", "woken-too", "new"]
