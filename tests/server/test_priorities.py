"""The ranked ready queue: higher priorities first, concurrency keys in turn
within a priority (a flood of one key cannot starve the others)."""

from __future__ import annotations

import pytest

from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.priorities import RankedQueue, check_priority


def drain(queue: RankedQueue) -> list[str]:
    taken = []
    while (run_id := queue.pop(())) is not None:
        taken.append(run_id)
    return taken


def test_higher_priorities_go_first_and_one_priority_is_served_in_order() -> None:
    queue = RankedQueue()
    for run_id, priority in (("a", 0), ("b", 5), ("c", -3), ("d", 5), ("e", 0)):
        queue.push(run_id, priority, "")
    assert queue.top() == 5
    assert len(queue) == 5
    assert drain(queue) == ["b", "d", "a", "e", "c"]
    assert queue.top() is None and len(queue) == 0


def test_keys_of_one_priority_take_turns() -> None:
    queue = RankedQueue()
    for i in range(5):
        queue.push(f"flood{i}", 0, "flood")
    queue.push("quiet0", 0, "quiet")
    queue.push("other0", 0, "other")
    assert drain(queue) == ["flood0", "quiet0", "other0", "flood1", "flood2", "flood3", "flood4"]


def test_a_resumed_run_goes_ahead_of_its_key_and_skipped_ids_are_dropped() -> None:
    queue = RankedQueue()
    queue.push("new", 1, "k")
    queue.push("resumed", 1, "k", resumed=True)
    queue.push("stale", 1, "k")
    assert queue.pop({"resumed"}) == "new"
    assert drain(queue) == ["stale"]


@pytest.mark.parametrize("value", [-1001, 1001])
def test_priorities_outside_the_range_are_invalid(value: int) -> None:
    with pytest.raises(InvalidArgument, match="priority must be from -1000 to 1000"):
        check_priority(value, "priority")
    assert check_priority(1000, "priority") == 1000


async def test_runs_put_back_after_a_failed_claim_or_from_a_lost_worker_keep_their_priority() -> (
    None
):
    import asyncio

    from stepd.server.engine.dispatcher import Dispatcher
    from stepd.server.engine.sessions import WorkerSession

    claimed: list[str] = []
    fail_once = {"urgent"}

    async def claim(session: WorkerSession, run_id: str, served: object, pin: str) -> None:
        if run_id in fail_once:  # the claim fails in the server: back after a delay
            fail_once.discard(run_id)
            dispatcher.push_later(0.005, "w", "v1", run_id)
            await asyncio.sleep(0.05)  # the slot stays taken until it is back
        else:
            claimed.append(run_id)
        session.held.pop(run_id, None)  # done with at once: the slot is free again
        dispatcher.kick()

    dispatcher = Dispatcher(claim)
    queue = ("w", "v1")
    gone = WorkerSession("gone", "gone", frozenset({queue}), capacity=1)
    dispatcher.push_to(gone, *queue, "woken", priority=7, fair_key="k")
    dispatcher.unstick(gone)  # that worker can no longer take it
    dispatcher.push(*queue, "urgent", priority=9)
    for n in range(3):
        dispatcher.push(*queue, f"five{n}", priority=5)
    worker = WorkerSession("w1", "w1", frozenset({queue}), capacity=1)
    dispatcher.add_session(worker)  # "urgent" goes first and fails once
    for _ in range(200):
        if len(claimed) == 5:
            break
        await asyncio.sleep(0.01)
    # Ranked as before: not behind the priority-5 runs.
    assert claimed == ["urgent", "woken", "five0", "five1", "five2"]
