"""Suspended runs and durable timers through the PollTask stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from stepd.server.domain import now_ms
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness, RawWorker, start_harness

OK = worker_service_pb2.COMMAND_STATUS_OK
INVALID = worker_service_pb2.COMMAND_STATUS_INVALID


async def suspend(
    worker: RawWorker, task: worker_service_pb2.RunTask, *timers: tuple[str, int]
) -> worker_service_pb2.CommandResult:
    waits = []
    for key, fire_ms in timers:
        wait = worker_service_pb2.WaitCondition(wait_key=key)
        wait.timer.fire_time.FromMilliseconds(fire_ms)
        waits.append(wait)
    return await worker.send(task, suspend_run=worker_service_pb2.SuspendRunCommand(waits=waits))


async def test_a_timer_wakes_a_suspended_run(harness: Harness) -> None:
    worker = harness.worker("w", capacity=1)
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await worker.record(task, "before", "1")
    # Far enough ahead that the other run below is handed out first even on a
    # busy machine (300 ms was not, once).
    fire_at = now_ms() + 1500
    assert (await suspend(worker, task, ("sleep", fire_at))).status == OK
    assert (await harness.get(run_id)).status == types_pb2.RUN_STATUS_SUSPENDED
    # A suspended run holds no slot: another run gets the worker's only slot.
    other_id = await harness.trigger("w")
    other = await worker.next_task()
    assert other.run_id == other_id
    await worker.complete(other, "null")

    woken = await worker.next_task()
    assert time.time() * 1000 >= fire_at - 5
    assert (woken.run_id, woken.lease_id) == (run_id, 2)
    kinds = {e.WhichOneof("entry"): e for e in woken.journal}
    assert kinds["step"].step.step_key == "before"
    assert kinds["wait"].wait.wait_key == "sleep"
    assert kinds["wait"].wait.met_time.ToMilliseconds() >= fire_at - 5
    assert (await worker.complete(woken, '"slept"')).status == OK


async def test_cancel_a_suspended_run(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await suspend(worker, task, ("sleep", now_ms() + 200))
    response = await harness.client.CancelRun(wf.CancelRunRequest(run_id=run_id))
    assert response.run.status == types_pb2.RUN_STATUS_CANCELLED
    engine = harness.running.engine
    assert engine.timers.scheduled_count() == 0
    assert await engine.store.due_timers(now_ms() + 10_000, 10) == []
    await asyncio.sleep(0.4)  # the timer's time passes and must wake nothing
    assert (await harness.get(run_id)).status == types_pb2.RUN_STATUS_CANCELLED
    with pytest.raises(TimeoutError):
        await worker.next_task(seconds=0.2)


async def test_a_timer_survives_a_server_restart(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    fire_at = now_ms() + 600
    await suspend(worker, task, ("sleep", fire_at))
    database = harness.database
    await harness.close()

    restarted = await start_harness(database)
    try:
        again = restarted.worker("w")
        woken = await again.next_task(seconds=5)
        assert woken.run_id == run_id
        assert time.time() * 1000 >= fire_at - 5
        assert [e.wait.wait_key for e in woken.journal if e.HasField("wait")] == ["sleep"]
    finally:
        await restarted.close()


async def test_a_past_timer_fires_at_once(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await suspend(worker, task, ("sleep", now_ms() - 1000))
    assert (await worker.next_task()).run_id == run_id


@pytest.mark.parametrize(
    "timers",
    [(), (("a", 1), ("a", 2)), (("", 1),)],
    ids=["no-waits", "duplicate-keys", "empty-key"],
)
async def test_bad_suspensions_are_invalid(
    harness: Harness, timers: tuple[tuple[str, int], ...]
) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    result = await suspend(worker, task, *timers)
    assert result.status == INVALID
    assert "suspend_run.waits" in result.message
    # Retrying would fail the same way: the run fails with the reason, and
    # the worker is told to stop it.
    run = await harness.get(run_id)
    assert run.status == types_pb2.RUN_STATUS_FAILED
    assert run.error.type == "stepd.InvalidCommand"
    assert "suspend_run.waits" in run.error.message
    cancellation = await asyncio.wait_for(worker.cancellations.get(), 5)
    assert cancellation.run_id == run_id


async def test_fire_times_round_up_to_the_millisecond(harness: Harness) -> None:
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    wait = worker_service_pb2.WaitCondition(wait_key="sleep")
    wait.timer.fire_time.seconds = int(time.time()) + 60
    wait.timer.fire_time.nanos = 1_500_000  # 1.5 ms past the second
    command = worker_service_pb2.SuspendRunCommand(waits=[wait])
    assert (await worker.send(task, suspend_run=command)).status == OK
    (timer,) = await harness.running.engine.store.due_timers(now_ms() + 120_000, 10)
    assert timer.fire_time == wait.timer.fire_time.seconds * 1000 + 2


async def test_a_woken_run_goes_before_runs_that_never_started(harness: Harness) -> None:
    worker = harness.worker("w", capacity=1)
    sleeper_id = await harness.trigger("w")
    sleeper = await worker.next_task()
    fresh_ids = [await harness.trigger("w") for _ in range(3)]
    await suspend(worker, sleeper, ("sleep", now_ms() + 100))
    busy = await worker.next_task()  # the slot went to the oldest fresh run
    assert busy.run_id == fresh_ids[0]
    await asyncio.sleep(0.3)  # the sleeper's timer fires meanwhile
    await worker.complete(busy, "null")
    assert (await worker.next_task()).run_id == sleeper_id


async def test_a_step_result_over_the_limit_fails_the_run(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    result = await worker.record(task, "big", '"' + "x" * 3_000_000 + '"')
    assert result.status == INVALID
    run = await harness.get(run_id)
    assert run.status == types_pb2.RUN_STATUS_FAILED
    assert (run.error.type, run.error.step_key) == ("stepd.InvalidCommand", "big")
    assert "limit" in run.error.message
