"""A new run that a connected worker has room for is claimed in the transaction
that creates it and sent at once; one that would wait or be ranked goes through
the ready queues as before, and never ahead of runs queued there; a caller who
goes away while the run is stored leaves it handed out all the same."""

from __future__ import annotations

import asyncio

from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.engine import TriggerParams
from stepd.server.engine.sessions import WorkerSession
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as wf
from stepd.v1.worker_service_pb2 import RunTask
from tests.server.conftest import Harness, RawWorker

RUNNING = types_pb2.RUN_STATUS_RUNNING
PENDING = types_pb2.RUN_STATUS_PENDING


async def trigger(harness: Harness, workflow: str, **fields: object) -> types_pb2.Run:
    request = wf.TriggerRequest(workflow_name=workflow, input=types_pb2.Payload(json="{}"))
    for name, value in fields.items():
        setattr(request, name, value)
    return (await harness.client.Trigger(request)).run


async def history_types(harness: Harness, run_id: str) -> list[str]:
    history = await harness.running.engine.store.run_history(run_id)
    assert history is not None
    return [entry.type.value for entry in history]


async def busy_worker(harness: Harness) -> tuple[RawWorker, types_pb2.Run, RunTask]:
    """A worker with one slot, taken by a run triggered first (and its task)."""
    worker = harness.worker("orders", capacity=1)
    await worker.settings
    first = await trigger(harness, "orders")
    return worker, first, await worker.next_task()


async def test_a_run_a_worker_has_room_for_is_running_when_trigger_answers(
    harness: Harness,
) -> None:
    worker = harness.worker("orders", capacity=2)
    await worker.settings

    run = await trigger(harness, "orders")

    assert run.status == RUNNING and run.dispatch_count == 1
    task = await worker.next_task()
    assert (task.run_id, task.lease_id) == (run.run_id, 1)
    assert await history_types(harness, run.run_id) == ["triggered", "dispatched"]
    assert (await worker.complete(task, '"done"')).status == 1
    assert (await harness.get(run.run_id, wait=True)).status == types_pb2.RUN_STATUS_COMPLETED


async def test_without_room_a_run_is_queued_and_handed_out_in_its_turn(harness: Harness) -> None:
    worker, first, held = await busy_worker(harness)

    second = await trigger(harness, "orders")
    third = await trigger(harness, "orders")

    assert first.status == RUNNING
    assert second.status == PENDING and third.status == PENDING
    await worker.complete(held, "1")
    task = await worker.next_task()
    assert task.run_id == second.run_id
    await worker.complete(task, "2")
    assert (await worker.next_task()).run_id == third.run_id


async def test_a_ranked_run_goes_through_the_ready_queues(harness: Harness) -> None:
    worker = harness.worker("orders", capacity=2)
    await worker.settings

    run = await trigger(harness, "orders", priority=5)

    assert run.status == PENDING  # ranked among ready runs first
    assert (await worker.next_task()).run_id == run.run_id


async def test_a_cancelled_trigger_still_hands_its_run_out(harness: Harness) -> None:
    worker = harness.worker("orders", capacity=1)
    await worker.settings
    engine = harness.running.engine
    for plain in (True, False):
        params = TriggerParams("orders", "", "{}", priority=None if plain else 1)
        call = asyncio.create_task(engine.trigger(params))
        await asyncio.sleep(0)  # the run is being stored
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        assert call.cancelled()

        task = await worker.next_task()
        run = await harness.get(task.run_id)
        assert run.status == RUNNING
        await worker.complete(task, "null")


QUEUE = ("orders", "1")


def idle_session(name: str, capacity: int = 1) -> WorkerSession:
    return WorkerSession(name, name, frozenset({QUEUE}), capacity=capacity)


async def claim_nothing(*_: object) -> None:
    """Leave every popped run where the test can see it."""


async def test_a_slot_is_reserved_at_once_only_with_nothing_queued() -> None:
    dispatcher = Dispatcher(claim_nothing)
    worker = idle_session("w1")
    dispatcher.add_session(worker)

    assert dispatcher.reserve_at_once("orders", "2", "other-version") is None
    assert dispatcher.reserve_at_once("orders", "1", "r1") == (worker, QUEUE, "")
    assert worker.held == {"r1": 0} and worker.room_for_new == 0
    assert dispatcher.reserve_at_once("orders", "1", "r2") is None  # no room left

    worker.drop("r1")
    dispatcher.push("orders", "1", "queued")  # queued first: it goes first
    assert dispatcher.reserve_at_once("orders", "1", "r3") is None


async def test_a_continuation_waiting_for_a_session_keeps_its_slot() -> None:
    dispatcher = Dispatcher(claim_nothing)
    worker = idle_session("w1")
    dispatcher.add_session(worker)
    dispatcher.push_to(worker, "orders", "1", "woken")

    assert dispatcher.reserve_at_once("orders", "1", "r1") is None


async def test_a_run_without_a_version_is_pinned_to_the_newest_served() -> None:
    dispatcher = Dispatcher(claim_nothing)
    worker = WorkerSession("w1", "w1", frozenset({("orders", "1"), ("orders", "3")}), capacity=1)
    dispatcher.add_session(worker)

    assert dispatcher.reserve_at_once("orders", "", "r1") == (worker, ("orders", "3"), "3")


async def test_a_wait_for_a_queued_run_is_answered_at_its_end(harness: Harness) -> None:
    """A run created here and queued (held by no worker) is waited for without a
    first read; its end, and a cancellation, still answer the caller, and a run
    that ended before the wait began is answered at once."""
    worker, first, held = await busy_worker(harness)
    queued = await trigger(harness, "orders")
    cancelled = await trigger(harness, "orders")
    assert queued.status == PENDING and cancelled.status == PENDING

    waits = [
        asyncio.create_task(asyncio.wait_for(harness.get(run.run_id, wait=True), 10))
        for run in (first, queued, cancelled)
    ]
    await asyncio.sleep(0.1)
    await harness.client.CancelRun(wf.CancelRunRequest(run_id=cancelled.run_id, reason="test"))
    await worker.complete(held, "1")
    await worker.complete(await worker.next_task(), "2")
    ended = await asyncio.gather(*waits)

    assert [run.status for run in ended] == [
        types_pb2.RUN_STATUS_COMPLETED,
        types_pb2.RUN_STATUS_COMPLETED,
        types_pb2.RUN_STATUS_CANCELLED,
    ]
    # Waited for again once ended: answered from the store at once (a 5 s wait
    # that saw it as unended would run out first).
    again = await asyncio.wait_for(harness.get(queued.run_id, wait=True), 3)
    assert again.status == types_pb2.RUN_STATUS_COMPLETED
