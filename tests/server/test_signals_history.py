"""Signals, first-of waits, custom entries and ListRunEvents through real gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from stepd.server.domain import now_ms
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness, RawWorker

OK = worker_service_pb2.COMMAND_STATUS_OK


def signal_wait(key: str, name: str) -> worker_service_pb2.WaitCondition:
    return worker_service_pb2.WaitCondition(
        wait_key=key, signal=worker_service_pb2.SignalWait(name=name)
    )


def timer_wait(key: str, fire_ms: int) -> worker_service_pb2.WaitCondition:
    wait = worker_service_pb2.WaitCondition(wait_key=key)
    wait.timer.fire_time.FromMilliseconds(fire_ms)
    return wait


async def suspend(
    worker: RawWorker, task: worker_service_pb2.RunTask, *waits: worker_service_pb2.WaitCondition
) -> int:
    command = worker_service_pb2.SuspendRunCommand(waits=list(waits))
    return int((await worker.send(task, suspend_run=command)).status)


async def send_signal(harness: Harness, run_id: str, name: str, json: str, req: str = "") -> None:
    await harness.client.Signal(
        wf.SignalRequest(
            run_id=run_id, name=name, payload=types_pb2.Payload(json=json), request_id=req
        )
    )


def met(task: worker_service_pb2.RunTask) -> dict[str, str]:
    return {e.wait.wait_key: e.wait.payload.json for e in task.journal if e.HasField("wait")}


async def test_a_signal_wakes_the_run_waiting_for_it(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    assert await suspend(worker, task, signal_wait("signal:1", "approve")) == OK
    await send_signal(harness, run_id, "other", "0")  # another name wakes nothing
    with pytest.raises(TimeoutError):
        await worker.next_task(seconds=0.2)
    await send_signal(harness, run_id, "approve", '{"by": "ann"}')
    woken = await worker.next_task()
    assert met(woken) == {"signal:1": '{"by": "ann"}'}


async def test_signals_sent_early_are_buffered_in_order(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await send_signal(harness, run_id, "tick", "1", req="a")
    await send_signal(harness, run_id, "tick", "1", req="a")  # a retried call
    await send_signal(harness, run_id, "tick", "2", req="b")
    await suspend(worker, task, signal_wait("signal:1", "tick"))
    task = await worker.next_task()
    await suspend(worker, task, signal_wait("signal:2", "tick"))
    task = await worker.next_task()
    assert met(task) == {"signal:1": "1", "signal:2": "2"}
    await suspend(worker, task, signal_wait("signal:3", "tick"))
    with pytest.raises(TimeoutError):  # the duplicate was not stored
        await worker.next_task(seconds=0.2)


@pytest.mark.parametrize("signal_first", [True, False])
async def test_sleep_or_signal_whichever_comes_first(harness: Harness, signal_first: bool) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    delay = 5_000 if signal_first else 150
    await suspend(
        worker, task, timer_wait("sleep:1", now_ms() + delay), signal_wait("signal:1", "go")
    )
    if signal_first:
        await send_signal(harness, run_id, "go", '"now"')
    woken = await worker.next_task(seconds=5)
    if signal_first:
        assert met(woken) == {"signal:1": '"now"'}
    else:
        assert met(woken) == {"sleep:1": ""}
        # The abandoned signal wait does not take a signal sent later...
        await send_signal(harness, run_id, "go", '"late"')
        with pytest.raises(TimeoutError):
            await worker.next_task(seconds=0.2)
        # ...the next wait on the name does.
        await suspend(worker, woken, signal_wait("signal:2", "go"))
        again = await worker.next_task()
        assert met(again)["signal:2"] == '"late"'


async def test_signal_errors(harness: Harness) -> None:
    worker = harness.worker("w")
    done_id = await harness.trigger("w")
    await worker.complete(await worker.next_task(), "null")
    cases = [
        ("nope", "x", grpc.StatusCode.NOT_FOUND),
        (done_id, "x", grpc.StatusCode.FAILED_PRECONDITION),
        (done_id, "", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for run_id, name, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await send_signal(harness, run_id, name, "1")
        assert err.value.code() == code


async def test_history_in_order_with_custom_entries_once(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await worker.record(task, "charge", '"paid"')
    event = worker_service_pb2.RecordEventCommand(
        entry_key="log:1", name="log", payload=types_pb2.Payload(json='"half way"')
    )
    assert (await worker.send(task, record_event=event)).status == OK
    assert (await worker.send(task, record_event=event)).status == OK  # replayed: kept once
    await suspend(worker, task, signal_wait("signal:1", "approve"))
    await asyncio.sleep(0.01)
    await send_signal(harness, run_id, "approve", "true")
    task = await worker.next_task()
    await worker.complete(task, '"done"')

    events: list[types_pb2.RunEvent] = []
    token = ""
    while True:
        page = await harness.client.ListRunEvents(
            wf.ListRunEventsRequest(run_id=run_id, page_size=3, page_token=token)
        )
        events += page.events
        token = page.next_page_token
        if not token:
            break
    names = [types_pb2.RunEventType.Name(e.type).removeprefix("RUN_EVENT_TYPE_") for e in events]
    assert names == [
        "TRIGGERED",
        "DISPATCHED",
        "STEP_COMPLETED",
        "CUSTOM",
        "SUSPENDED",
        "SIGNAL_RECEIVED",
        "WAIT_MET",
        "DISPATCHED",
        "COMPLETED",
    ]
    assert [e.sequence for e in events] == list(range(1, 10))
    assert events[2].key == "charge" and events[2].payload.json == '"paid"'
    assert events[3].payload.json == '"half way"'
    assert events[5].name == "approve" and events[6].key == "signal:1"
    assert events[6].payload.json == "true"  # what the met wait delivered
    assert events[7].attempt == 2 and events[8].payload.json == '"done"'
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.ListRunEvents(wf.ListRunEventsRequest(run_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_history_tells_failed_attempts_from_a_steps_failed_outcome(
    harness: Harness,
) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    for attempt, attempt_only in ((1, True), (2, True), (2, False)):
        step = types_pb2.StepRecord(
            step_key="charge",
            attempt=attempt,
            error=types_pb2.ErrorInfo(type="builtins.ValueError", message=f"no {attempt}"),
            attempt_only=attempt_only,
        )
        record = worker_service_pb2.RecordStepCommand(step=step)
        assert (await worker.send(task, record_step=record)).status == OK
    await suspend(worker, task, timer_wait("sleep:1", now_ms()))
    await worker.next_task()  # woken by the timer
    page = await harness.client.ListRunEvents(wf.ListRunEventsRequest(run_id=run_id))
    failed = [e for e in page.events if e.type == types_pb2.RUN_EVENT_TYPE_STEP_FAILED]
    assert [(e.attempt, e.attempt_only) for e in failed] == [(1, True), (2, True), (2, False)]
    met_timer = [e for e in page.events if e.type == types_pb2.RUN_EVENT_TYPE_WAIT_MET]
    assert [e.key for e in met_timer] == ["sleep:1"] and not met_timer[0].HasField("payload")


async def test_the_journal_lists_entries_in_the_order_they_happened(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await worker.record(task, "s1", "1")
    # A signal wait registered first, kept across rounds that timers win.
    await suspend(worker, task, signal_wait("signal:1", "x"), timer_wait("sleep:1", now_ms()))
    task = await worker.next_task()
    await worker.record(task, "s2", "2")
    await suspend(worker, task, signal_wait("signal:1", "x"), timer_wait("sleep:2", now_ms()))
    task = await worker.next_task()
    await worker.record(task, "s3", "3")
    await suspend(worker, task, signal_wait("signal:1", "x"))
    await send_signal(harness, run_id, "x", '"late"')
    task = await worker.next_task()

    order = [e.step.step_key if e.HasField("step") else e.wait.wait_key for e in task.journal]
    assert order == ["s1", "sleep:1", "s2", "sleep:2", "s3", "signal:1"]
    assert [e.sequence for e in task.journal] == list(range(1, 7))
