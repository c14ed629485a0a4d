"""A worker session's slots and runs handed out before a sleep's time: such a run
counts against the early capacity, not a slot, until shortly before its time."""

from __future__ import annotations

import time

from stepd.server.engine.sessions import WorkerSession

QUEUE = ("w", "v1")


def session(capacity: int = 1, early_capacity: int = 2) -> WorkerSession:
    return WorkerSession(
        "w1", "w1", frozenset({QUEUE}), capacity=capacity, early_capacity=early_capacity
    )


def handed_out(worker: WorkerSession, run_id: str) -> None:
    worker.reserve(run_id)
    worker.held[run_id] = 7  # claimed under lease 7


def test_a_run_waiting_out_its_sleep_frees_its_slot_until_shortly_before_its_time() -> None:
    worker = session()
    handed_out(worker, "early")
    assert worker.free_slots == 0
    worker.slot_time = 0.05
    assert worker.wait_out("early", 0.4)
    assert worker.free_slots == 1 and worker.waiting_out == 1
    # Its slot comes back twice the slot time before its time (0.3 s from now).
    time.sleep(0.32)
    assert worker.free_slots == 0 and worker.waiting_out == 0
    assert worker.drop("early") == 7
    assert worker.free_slots == 1


def test_no_room_beside_the_capacity_or_too_little_time_keeps_the_slot_taken() -> None:
    worker = session(capacity=3, early_capacity=1)
    for run_id in ("a", "b", "c"):
        handed_out(worker, run_id)
    worker.slot_time = 0.05
    assert not worker.wait_out("a", 0.1)  # not more than twice the slot time ahead
    assert worker.wait_out("b", 5.0)
    assert not worker.wait_out("c", 5.0)  # the early capacity is full
    assert not worker.wait_out("gone", 5.0)  # not held
    assert worker.free_slots == 1
    worker.drop("b")  # ended (or cancelled) while it waited: nothing of it stays
    assert worker.waiting_out == 0 and worker.free_slots == 1
    assert session(early_capacity=0).wait_out("x", 5.0) is False


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
