"""PublishEvent and event waits: matching, timing, duplicates."""

from __future__ import annotations

import grpc
import pytest

from stepd.server.domain import now_ms
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness, RawWorker
from tests.server.test_signals_history import met

OK = worker_service_pb2.COMMAND_STATUS_OK
INVALID = worker_service_pb2.COMMAND_STATUS_INVALID


def event_wait(
    key: str, name: str, since_ms: int, match: str = ""
) -> worker_service_pb2.WaitCondition:
    wait = worker_service_pb2.WaitCondition(
        wait_key=key, event=worker_service_pb2.EventWait(name=name, match_json=match)
    )
    wait.event.since.FromMilliseconds(since_ms)
    return wait


async def publish(
    harness: Harness, name: str, json: str, event_id: str = ""
) -> wf.PublishEventResponse:
    return await harness.client.PublishEvent(
        wf.PublishEventRequest(name=name, payload=types_pb2.Payload(json=json), event_id=event_id)
    )


async def waiting_run(
    harness: Harness, worker: RawWorker, *waits: worker_service_pb2.WaitCondition
) -> tuple[str, int]:
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    command = worker_service_pb2.SuspendRunCommand(waits=list(waits))
    return run_id, int((await worker.send(task, suspend_run=command)).status)


async def test_a_matching_event_wakes_the_run(harness: Harness) -> None:
    worker = harness.worker("w")
    since = now_ms()
    run_id, status = await waiting_run(
        harness, worker, event_wait("event:1", "order.paid", since, '{"order": 7}')
    )
    assert status == OK
    other = await publish(harness, "order.paid", '{"order": 8, "amount": 1}')
    assert list(other.woken_run_ids) == []  # does not match
    with pytest.raises(TimeoutError):
        await worker.next_task(seconds=0.2)
    hit = await publish(harness, "order.paid", '{"order": 7, "amount": 5}', event_id="e-7")
    assert list(hit.woken_run_ids) == [run_id]
    woken = await worker.next_task()
    assert met(woken) == {"event:1": '{"order": 7, "amount": 5}'}
    again = await publish(harness, "order.paid", '{"order": 7}', event_id="e-7")
    assert again.already_published and list(again.woken_run_ids) == []


async def test_an_event_published_before_the_wait_began_is_not_delivered(
    harness: Harness,
) -> None:
    worker = harness.worker("w")
    await publish(harness, "ping", "{}")
    since = now_ms() + 5  # the wait begins after that event
    _, status = await waiting_run(harness, worker, event_wait("event:1", "ping", since))
    assert status == OK
    with pytest.raises(TimeoutError):
        await worker.next_task(seconds=0.3)


async def test_an_event_published_while_the_worker_runs_is_not_missed(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    since = now_ms()  # the workflow began waiting here...
    await publish(harness, "ping", '{"n": 1}')  # ...the event comes before it suspends
    command = worker_service_pb2.SuspendRunCommand(waits=[event_wait("event:1", "ping", since)])
    assert (await worker.send(task, suspend_run=command)).status == OK
    woken = await worker.next_task()
    assert (woken.run_id, met(woken)) == (run_id, {"event:1": '{"n": 1}'})


async def test_bad_event_waits_and_publishes(harness: Harness) -> None:
    worker = harness.worker("w")
    _, status = await waiting_run(harness, worker, event_wait("event:1", "x", now_ms(), "[1]"))
    assert status == INVALID
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(harness, "", "{}")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(harness, "x", "{not json")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
