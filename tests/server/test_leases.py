"""Leases: stream settings, silent workers, drain, and expired stored leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stepd.server.domain import now_ms
from stepd.v1 import types_pb2, worker_service_pb2
from tests.server.conftest import Harness, start_harness

LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST


@pytest.fixture
async def short_lease(database: str) -> AsyncIterator[Harness]:
    h = await start_harness(database, lease_timeout_ms=900)
    yield h
    await h.close()


async def test_first_response_carries_the_lease_rules(short_lease: Harness) -> None:
    worker = short_lease.worker("w")
    settings = await asyncio.wait_for(worker.settings, 5)
    assert settings.lease_timeout.ToMilliseconds() == 900
    assert settings.heartbeat_interval.ToMilliseconds() == 300


async def test_heartbeats_keep_a_worker_holding_its_run(short_lease: Harness) -> None:
    worker = short_lease.worker("w")
    run_id = await short_lease.trigger("w")
    task = await worker.next_task()
    for _ in range(8):  # 2.4 s, well past the 0.9 s lease
        await asyncio.sleep(0.3)
        await worker.put(
            worker_service_pb2.PollTaskRequest(heartbeat=worker_service_pb2.WorkerHeartbeat())
        )
    assert not worker.ended.is_set()
    run = await short_lease.get(run_id)
    assert (run.status, run.dispatch_count) == (types_pb2.RUN_STATUS_RUNNING, 1)
    assert (await worker.complete(task, "1")).status == worker_service_pb2.COMMAND_STATUS_OK


async def test_a_silent_worker_loses_its_runs_to_another(short_lease: Harness) -> None:
    silent = short_lease.worker("w")
    run_id = await short_lease.trigger("w")
    task = await silent.next_task()
    cancellation = await asyncio.wait_for(silent.cancellations.get(), 5)
    assert (cancellation.run_id, cancellation.reason) == (run_id, "lease expired")
    await asyncio.wait_for(silent.ended.wait(), 5)

    other = short_lease.worker("w")
    retry = await other.next_task()
    assert (retry.run_id, retry.lease_id) == (run_id, task.lease_id + 1)
    # The silent worker comes back on a new stream: its old lease is refused.
    returning = short_lease.worker("w")
    assert (await returning.complete(task, '"late"')).status == LEASE_LOST
    await other.complete(retry, '"on time"')
    assert (await short_lease.get(run_id, wait=True)).result.json == '"on time"'


async def test_a_draining_worker_gets_no_new_tasks(harness: Harness) -> None:
    draining = harness.worker("w", capacity=5)
    first_id = await harness.trigger("w")
    task = await draining.next_task()
    await draining.put(
        worker_service_pb2.PollTaskRequest(drain=worker_service_pb2.WorkerDrain(reason="test"))
    )
    await asyncio.sleep(0.1)
    second_id = await harness.trigger("w")
    with pytest.raises(TimeoutError):
        await draining.next_task(seconds=0.3)
    release = worker_service_pb2.ReleaseRunCommand(reason="shutting down")
    assert (await draining.send(task, release_run=release)).status == (
        worker_service_pb2.COMMAND_STATUS_OK
    )
    other = harness.worker("w")
    handed = {(await other.next_task()).run_id, (await other.next_task()).run_id}
    assert handed == {first_id, second_id}


async def test_expired_stored_lease_of_a_gone_owner_is_requeued(short_lease: Harness) -> None:
    run_id = await short_lease.trigger("orphaned")
    store = short_lease.running.engine.store
    # A lease taken by a server process that died: its owner is not connected here.
    claimed = await store.claim_run(run_id, "ghost-worker", now_ms() - 1)
    assert claimed is not None
    worker = short_lease.worker("orphaned")
    task = await worker.next_task(seconds=5)
    assert (task.run_id, task.lease_id) == (run_id, 2)


async def test_a_command_that_fails_in_the_server_hands_the_run_out_again(
    harness: Harness,
) -> None:
    store = harness.running.engine.store
    record_step = store.record_step
    failures: list[object] = []

    async def fail_once(*args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(args)
            raise ConnectionError("the database went away")  # as a dropped connection would
        return await record_step(*args, **kwargs)  # type: ignore[arg-type]

    store.record_step = fail_once  # type: ignore[method-assign,assignment]
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    step = types_pb2.StepRecord(step_key="charge", result=types_pb2.Payload(json="1"))
    result = await worker.send(task, record_step=worker_service_pb2.RecordStepCommand(step=step))
    assert result.status == worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR
    cancellation = await asyncio.wait_for(worker.cancellations.get(), 5)
    assert (cancellation.run_id, cancellation.lease_id) == (run_id, task.lease_id)
    # The worker dropped the run; it comes back under a new lease, not held forever.
    again = await worker.next_task()
    assert (again.run_id, again.lease_id) == (run_id, task.lease_id + 1)
    assert (
        await worker.send(again, record_step=worker_service_pb2.RecordStepCommand(step=step))
    ).status == worker_service_pb2.COMMAND_STATUS_OK
    await worker.complete(again, '"done"')
    assert (await harness.get(run_id, wait=True)).result.json == '"done"'
