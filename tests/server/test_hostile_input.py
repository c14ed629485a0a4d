"""Hostile and careless input gets its documented status and a short message,
never UNKNOWN or INTERNAL, a traceback in the log, or a stream ended without
a reason; the server keeps serving (both backends)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from stepd.server.api.convert import MAX_TIMESTAMP_MS, timestamp
from stepd.v1 import schedules_pb2, types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness

OK = worker_service_pb2.COMMAND_STATUS_OK
INVALID = worker_service_pb2.COMMAND_STATUS_INVALID
WORKFLOW = "/stepd.v1.WorkflowService/"
POLL_TASK = "/stepd.v1.WorkerService/PollTask"
#: The most of a caller's value an error message may repeat.
ECHO = 64


async def expect(call: Any, code: grpc.StatusCode, *words: str) -> str:
    """Await an RPC that must fail with ``code`` and a message holding ``words``."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    message = raised.value.details() or ""
    assert raised.value.code() is code, (raised.value.code(), message)
    for word in words:
        assert word in message, message
    assert len(message) < 400, message
    return message


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at WARNING or above, and no traceback, for a client's mistakes."""
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.name, r.levelname, r.getMessage()[:200]) for r in loud]


def hello(*workflows: str, **fields: Any) -> worker_service_pb2.PollTaskRequest:
    registrations = [
        worker_service_pb2.WorkflowRegistration(name=n, version="1") for n in workflows
    ]
    return worker_service_pb2.PollTaskRequest(
        hello=worker_service_pb2.WorkerHello(
            worker_id="hostile", identity="hostile", workflows=registrations, capacity=4, **fields
        )
    )


async def raw_stream(harness: Harness, *messages: bytes) -> grpc.aio.AioRpcError:
    """Send raw messages on a PollTask stream; return the error that ends it."""

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message
        await asyncio.sleep(10)  # keep our side open: the server must end the stream

    call = harness.channel.stream_stream(
        POLL_TASK, request_serializer=None, response_deserializer=None
    )(requests())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(8):
            async for _ in call:
                pass
    return raised.value


async def test_undecodable_bytes_are_invalid_argument_without_a_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for method in ("GetRun", "Trigger", "ListRuns", "Signal", "CreateSchedule"):
        call = harness.channel.unary_unary(
            WORKFLOW + method, request_serializer=None, response_deserializer=None
        )
        message = await expect(call(b"\xff\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT)
        assert "Error" not in message and "class" not in message, message
    watch = harness.channel.unary_stream(
        WORKFLOW + "WatchRun", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as watched:
        async for _ in watch(b"\xff\xff\xff\xff"):
            pass
    assert watched.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Error" not in (watched.value.details() or "")
    ended = await raw_stream(harness, b"\x0a\xff\xff")
    assert ended.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    ended = await raw_stream(harness, hello("w").SerializeToString(), b"\x12\xff\xff\xff")
    assert ended.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    assert "PollTaskRequest" in (ended.details() or "")
    no_errors_logged(caplog)
    await harness.trigger("still-serving")


async def test_times_out_of_range_are_invalid_argument_naming_the_field(harness: Harness) -> None:
    far = 2**62
    trigger = wf.TriggerRequest(workflow_name="w")
    trigger.deadline.seconds = far
    await expect(harness.client.Trigger(trigger), grpc.StatusCode.INVALID_ARGUMENT, "deadline")
    trigger = wf.TriggerRequest(workflow_name="w")
    trigger.start_time.nanos = -1
    await expect(harness.client.Trigger(trigger), grpc.StatusCode.INVALID_ARGUMENT, "start_time")
    listing = wf.ListRunsRequest()
    listing.create_time_before.seconds = -far
    await expect(
        harness.client.ListRuns(listing), grpc.StatusCode.INVALID_ARGUMENT, "create_time_before"
    )
    run_id = await harness.trigger("w")
    get = wf.GetRunRequest(run_id=run_id, wait=True)
    get.wait_timeout.seconds = far
    await expect(harness.client.GetRun(get), grpc.StatusCode.INVALID_ARGUMENT, "wait_timeout")
    get.wait_timeout.seconds, get.wait_timeout.nanos = 1, -5
    await expect(harness.client.GetRun(get), grpc.StatusCode.INVALID_ARGUMENT, "wait_timeout")


async def test_a_bad_worker_command_gets_its_own_invalid_result(harness: Harness) -> None:
    worker = harness.worker("w")
    bad_id = await harness.trigger("w")
    good_id = await harness.trigger("w")
    tasks = {t.run_id: t for t in [await worker.next_task(), await worker.next_task()]}
    step = types_pb2.StepRecord(step_key="s", result=types_pb2.Payload(json="1"))
    step.start_time.seconds = 2**62
    bad, fine = (
        await worker.send_batch(
            tasks[bad_id], {"record_step": worker_service_pb2.RecordStepCommand(step=step)}
        ),
        await worker.record(tasks[good_id], "s", "2"),
    )
    assert bad[0].status == INVALID
    assert "record_step.step.start_time" in bad[0].message
    assert fine.status == OK  # the stream carries on, and so do the worker's other runs
    waits = worker_service_pb2.SuspendRunCommand(
        waits=[worker_service_pb2.WaitCondition(wait_key="t", timer=worker_service_pb2.TimerWait())]
    )
    waits.waits[0].timer.fire_time.seconds = -(2**62)
    (suspended,) = await worker.send_batch(tasks[good_id], {"suspend_run": waits})
    assert suspended.status == INVALID and "timer.fire_time" in suspended.message
    assert not worker.ended.is_set()
    failed = await harness.get(bad_id)
    assert failed.status == types_pb2.RUN_STATUS_FAILED
    assert failed.error.type == "stepd.InvalidCommand"


async def test_a_stream_the_server_ends_carries_a_status_and_a_reason(harness: Harness) -> None:
    schedule = schedules_pb2.ScheduleSpec(cron="* * * * *", time_zone="x" * 300)
    declared = hello("w")
    declared.hello.workflows[0].schedule.CopyFrom(schedule)
    ended = await raw_stream(harness, declared.SerializeToString())
    assert ended.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    assert "time_zone" in (ended.details() or "")
    timed = hello("w")
    timed.hello.workflows[0].execution_timeout.seconds = 2**62
    ended = await raw_stream(harness, timed.SerializeToString())
    assert ended.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    assert "execution_timeout" in (ended.details() or "")
    nameless = hello("w")
    nameless.hello.worker_id = "w" * 10_000
    ended = await raw_stream(harness, nameless.SerializeToString())
    assert ended.code() is grpc.StatusCode.INVALID_ARGUMENT, ended.details()
    assert len(ended.details() or "") < 200


@pytest.mark.parametrize(
    "text",
    ["[" * 1000 + "]" * 1000, "[" * 65 + "]" * 65, "NaN", "[Infinity]", '{"a": -Infinity}'],
    ids=["deep-1000", "deep-65", "nan", "infinity", "minus-infinity"],
)
async def test_payloads_that_are_not_json_or_nest_too_deep_are_invalid(
    harness: Harness, text: str
) -> None:
    payload = types_pb2.Payload(json=text)
    calls = [
        harness.client.Trigger(wf.TriggerRequest(workflow_name="w", input=payload)),
        harness.client.PublishEvent(wf.PublishEventRequest(name="e", payload=payload)),
        harness.client.CreateSchedule(
            wf.CreateScheduleRequest(
                workflow_name="w", spec=schedules_pb2.ScheduleSpec(cron="@daily", input=payload)
            )
        ),
    ]
    for call in calls:
        await expect(call, grpc.StatusCode.INVALID_ARGUMENT, ".json")
    run_id = await harness.trigger("w")
    signal = wf.SignalRequest(run_id=run_id, name="go", payload=payload)
    await expect(harness.client.Signal(signal), grpc.StatusCode.INVALID_ARGUMENT, "payload.json")
    worker = harness.worker("w")
    task = await worker.next_task()
    result = await worker.complete(task, text)
    assert result.status == INVALID and "complete_run.result.json" in result.message


async def test_a_payload_nested_to_the_limit_is_accepted(harness: Harness) -> None:
    deepest = "[" * 64 + "]" * 64
    run_id = await harness.trigger("w", deepest)
    assert (await harness.get(run_id)).input.json == deepest


async def test_data_without_an_encoding_is_invalid(harness: Harness) -> None:
    payload = types_pb2.Payload(data=b'{"a": 1}')
    await expect(
        harness.client.Trigger(wf.TriggerRequest(workflow_name="w", input=payload)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input.data",
    )
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    step = types_pb2.StepRecord(step_key="s", result=payload)
    (result,) = await worker.send_batch(
        task, {"record_step": worker_service_pb2.RecordStepCommand(step=step)}
    )
    assert result.status == INVALID and "record_step.step.result.data" in result.message


async def test_ids_and_names_are_bounded_and_never_echoed_whole(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    huge = "r" * 100_000
    client = harness.client
    for call, field in [
        (client.GetRun(wf.GetRunRequest(run_id=huge)), "run_id"),
        (client.CancelRun(wf.CancelRunRequest(run_id=huge)), "run_id"),
        (client.Signal(wf.SignalRequest(run_id="r", name=huge)), "name"),
        (client.ListRunEvents(wf.ListRunEventsRequest(run_id=huge)), "run_id"),
        (client.ListRuns(wf.ListRunsRequest(workflow_name=huge)), "workflow_name"),
        (client.GetSchedule(wf.GetScheduleRequest(schedule_id=huge)), "schedule_id"),
        (client.DeleteSchedule(wf.DeleteScheduleRequest(schedule_id=huge)), "schedule_id"),
        (client.TriggerSchedule(wf.TriggerScheduleRequest(schedule_id=huge)), "schedule_id"),
        (client.PublishEvent(wf.PublishEventRequest(name=huge)), "name"),
        (client.ExecuteHook(wf.ExecuteHookRequest(token=huge)), "token"),
        (client.Trigger(wf.TriggerRequest(workflow_name="w", idempotency_key=huge)), "key"),
        (client.CancelRun(wf.CancelRunRequest(run_id="r", reason=huge)), "reason"),
        (client.Trigger(wf.TriggerRequest(workflow_name="w\x00")), "NUL"),
    ]:
        message = await expect(call, grpc.StatusCode.INVALID_ARGUMENT, field)
        assert "r" * ECHO not in message
    unknown = "u" * 200  # within the bound: NOT_FOUND, quoting a short prefix only
    for call in [
        client.GetRun(wf.GetRunRequest(run_id=unknown)),
        client.CancelRun(wf.CancelRunRequest(run_id=unknown)),
        client.Signal(wf.SignalRequest(run_id=unknown, name="s")),
        client.ListRunEvents(wf.ListRunEventsRequest(run_id=unknown)),
        client.GetSchedule(wf.GetScheduleRequest(schedule_id=unknown)),
        client.PauseSchedule(wf.PauseScheduleRequest(schedule_id=unknown)),
    ]:
        message = await expect(call, grpc.StatusCode.NOT_FOUND, "uuuu")
        assert "u" * ECHO not in message
    no_errors_logged(caplog)


async def test_a_long_time_zone_is_invalid_argument(harness: Harness) -> None:
    for zone in ("x" * 300, "Europe/" + "x" * 250, "bad\x00zone", "../../etc/passwd"):
        spec = schedules_pb2.ScheduleSpec(cron="@hourly", time_zone=zone)
        await expect(
            harness.client.CreateSchedule(wf.CreateScheduleRequest(workflow_name="w", spec=spec)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "time_zone",
        )


async def test_the_last_nanosecond_of_year_9999_is_stored_and_shown_again(
    harness: Harness,
) -> None:
    # Rounded up to the millisecond it would pass the last time a Timestamp holds,
    # and every later listing of the run would fail.
    last = wf.TriggerRequest(workflow_name="nobody-serves-this")
    for field in (last.start_time, last.deadline):
        field.seconds, field.nanos = 253_402_300_799, 999_999_999
    run = (await harness.client.Trigger(last, timeout=10)).run
    assert run.scheduled_start_time.seconds == 253_402_300_799
    assert run.scheduled_start_time.nanos == 999_000_000
    assert run.deadline.seconds == 253_402_300_799
    listed = await harness.client.ListRuns(wf.ListRunsRequest(), timeout=10)
    assert run.run_id in [listed_run.run_id for listed_run in listed.runs]
    got = await harness.client.GetRun(wf.GetRunRequest(run_id=run.run_id), timeout=10)
    assert got.run.scheduled_start_time == run.scheduled_start_time


def test_a_stored_time_past_year_9999_shows_as_the_last_one_a_timestamp_holds() -> None:
    # E.g. a wake-up time millennia ahead: the run stays readable.
    shown = timestamp(MAX_TIMESTAMP_MS + 10**12)
    assert shown is not None and (shown.seconds, shown.nanos) == (253_402_300_799, 999_000_000)
    first = timestamp(-(10**18))
    assert first is not None and first.seconds == -62_135_596_800


@pytest.mark.parametrize("nanos", [0, 500], ids=["zero", "sub-millisecond"])
async def test_get_run_with_a_zero_wait_timeout_answers_at_once(
    harness: Harness, nanos: int
) -> None:
    run_id = await harness.trigger("nobody-serves-this")
    request = wf.GetRunRequest(run_id=run_id, wait=True)
    request.wait_timeout.nanos = nanos
    request.wait_timeout.seconds = 0
    assert request.HasField("wait_timeout")
    started = time.monotonic()
    run = (await harness.client.GetRun(request, timeout=10)).run
    assert run.status == types_pb2.RUN_STATUS_PENDING
    assert time.monotonic() - started < 2


async def test_a_server_fault_is_internal_with_a_traceback_naming_the_rpc_and_run(
    harness: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = await harness.trigger("w")

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(harness.running.engine, "cancel_run", broken)
    await expect(
        harness.client.CancelRun(wf.CancelRunRequest(run_id=run_id)),
        grpc.StatusCode.INTERNAL,
        "server log",
    )
    (fault,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert fault.exc_info is not None
    assert "CancelRun" in fault.getMessage() and run_id in fault.getMessage()


async def test_a_cron_that_ended_is_invalid_and_one_that_ends_soon_is_served(
    harness: Harness,
) -> None:
    ended = schedules_pb2.ScheduleSpec(cron="0 0 0 1 1 * 2020")  # seconds first, then a year
    await expect(
        harness.client.CreateSchedule(wf.CreateScheduleRequest(workflow_name="w", spec=ended)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.cron",
    )
    year = time.gmtime().tm_year + 1
    ending = schedules_pb2.ScheduleSpec(cron=f"0 0 0 1 1 * {year}")
    created = await harness.client.CreateSchedule(
        wf.CreateScheduleRequest(schedule_id="ending", workflow_name="w", spec=ending)
    )
    assert len(created.schedule.next_occasion_times) == 1
    got = await harness.client.GetSchedule(wf.GetScheduleRequest(schedule_id="ending"))
    assert len(got.schedule.next_occasion_times) == 1
