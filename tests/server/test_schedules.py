"""Event triggers, schedules and delayed starts on an in-process server over real gRPC:
what a worker's hello declares, the schedule API's answers and errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from stepd.server.domain import now_ms
from stepd.v1 import schedules_pb2, types_pb2, worker_service_pb2, worker_service_pb2_grpc
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness

Registration = worker_service_pb2.WorkflowRegistration


class Hello:
    """A PollTask stream opened with a hand-made hello."""

    def __init__(self, harness: Harness, *registrations: Registration) -> None:
        stub = worker_service_pb2_grpc.WorkerServiceStub(harness.channel)
        self.call: Any = stub.PollTask()  # type: ignore[call-arg]
        self.registrations = registrations

    async def open(self) -> worker_service_pb2.PollTaskResponse:
        """Send the hello; return the server's first answer (its settings)."""
        hello = worker_service_pb2.WorkerHello(
            worker_id=uuid.uuid4().hex, identity="test", workflows=self.registrations, capacity=1
        )
        await self.call.write(worker_service_pb2.PollTaskRequest(hello=hello))
        answer = await self.call.read()
        if answer is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise AssertionError(f"stream ended: {await self.call.code()}")
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
async def hellos() -> AsyncIterator[list[Hello]]:
    opened: list[Hello] = []
    yield opened
    for hello in opened:
        hello.close()


async def say_hello(harness: Harness, hellos: list[Hello], *regs: Registration) -> None:
    hello = Hello(harness, *regs)
    hellos.append(hello)
    assert (await hello.open()).HasField("settings")


def spec(cron: str = "0 * * * *", **fields: Any) -> schedules_pb2.ScheduleSpec:
    return schedules_pb2.ScheduleSpec(cron=cron, **fields)


async def create(harness: Harness, **fields: Any) -> wf.CreateScheduleResponse:
    fields.setdefault("workflow_name", "wf")
    fields.setdefault("spec", spec())
    return await harness.client.CreateSchedule(wf.CreateScheduleRequest(**fields))


async def status_of(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    return caught.value.code(), caught.value.details() or ""


# -- event triggers -----------------------------------------------------------------


async def test_the_newest_version_s_event_triggers_count(
    harness: Harness, hellos: list[Hello]
) -> None:
    await say_hello(harness, hellos, Registration(name="w", version="1", event_triggers=["a"]))
    first = await harness.client.PublishEvent(wf.PublishEventRequest(name="a", event_id="e1"))
    assert len(first.started_run_ids) == 1
    run = await harness.get(first.started_run_ids[0])
    assert (run.workflow_name, run.workflow_version) == ("w", "1")

    # Version 2 subscribes to "b" only: "a" no longer starts anything.
    await say_hello(harness, hellos, Registration(name="w", version="2", event_triggers=["b"]))
    second = await harness.client.PublishEvent(wf.PublishEventRequest(name="a", event_id="e2"))
    third = await harness.client.PublishEvent(wf.PublishEventRequest(name="b", event_id="e3"))
    assert second.started_run_ids == []
    assert len(third.started_run_ids) == 1
    assert (await harness.get(third.started_run_ids[0])).workflow_version == "2"


async def test_reserved_idempotency_keys_are_refused(harness: Harness) -> None:
    code, details = await status_of(harness.trigger("wf", idempotency_key="stepd:event:x:wf"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "idempotency_key" in details


# -- declared schedules -------------------------------------------------------------


async def test_an_invalid_declared_schedule_rejects_the_hello(
    harness: Harness, hellos: list[Hello]
) -> None:
    for bad, field in (
        (spec("nope"), "hello.workflows[1].schedule.cron"),
        (spec(time_zone="Atlantis/Capital"), "hello.workflows[1].schedule.time_zone"),
        (spec(input=types_pb2.Payload(json="{")), "hello.workflows[1].schedule.input"),
    ):
        hello = Hello(
            harness,
            Registration(name="ok", version="1"),
            Registration(name="w", version="1", schedule=bad),
        )
        hellos.append(hello)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hello.open()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or ""), caught.value.details()


async def test_a_declared_schedule_follows_the_newest_version(
    harness: Harness, hellos: list[Hello]
) -> None:
    v1 = Registration(name="w", version="1", schedule=spec("0 9 * * *", time_zone="Asia/Tokyo"))
    await say_hello(harness, hellos, v1)
    got = (await harness.client.GetSchedule(wf.GetScheduleRequest(schedule_id="w"))).schedule
    assert got.origin == schedules_pb2.SCHEDULE_ORIGIN_WORKFLOW
    assert (got.spec.cron, got.spec.time_zone) == ("0 9 * * *", "Asia/Tokyo")
    assert got.next_occasion_times[0].ToMilliseconds() > now_ms()

    # Version 2 drops the schedule: the declared schedule is removed.
    await say_hello(harness, hellos, Registration(name="w", version="2"))
    code, details = await status_of(
        harness.client.GetSchedule(wf.GetScheduleRequest(schedule_id="w"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'w'" in details


# -- the API ----------------------------------------------------------------------


async def test_create_is_idempotent_for_the_same_settings(harness: Harness) -> None:
    first = await create(harness, schedule_id="s1")
    same = await create(harness, schedule_id="s1")
    assert (first.already_existed, same.already_existed) == (False, True)
    assert same.schedule.create_time == first.schedule.create_time
    code, details = await status_of(create(harness, schedule_id="s1", spec=spec("5 * * * *")))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "s1" in details
    assert first.schedule.spec.overlap_policy == schedules_pb2.SCHEDULE_OVERLAP_POLICY_SKIP
    assert first.schedule.spec.catchup_policy == schedules_pb2.SCHEDULE_CATCHUP_POLICY_SKIP


async def test_bad_requests_name_the_field(harness: Harness) -> None:
    cases = [
        (create(harness, workflow_name=""), grpc.StatusCode.INVALID_ARGUMENT, "workflow_name"),
        (create(harness, spec=spec("")), grpc.StatusCode.INVALID_ARGUMENT, "spec.cron"),
        (create(harness, schedule_id="a b"), grpc.StatusCode.INVALID_ARGUMENT, "schedule_id"),
        (
            create(harness, spec=spec(overlap_policy=9)),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.overlap_policy",
        ),
        (
            harness.client.CreateSchedule(wf.CreateScheduleRequest(workflow_name="wf")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec",
        ),
        (
            harness.client.GetSchedule(wf.GetScheduleRequest(schedule_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            harness.client.PauseSchedule(wf.PauseScheduleRequest(schedule_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            harness.client.DeleteSchedule(wf.DeleteScheduleRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "schedule_id",
        ),
        (
            harness.client.TriggerSchedule(wf.TriggerScheduleRequest(schedule_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            harness.client.ListSchedules(wf.ListSchedulesRequest(page_token="garbage!")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
    ]
    for call, code, field in cases:
        got_code, details = await status_of(call)
        assert (got_code, field in details) == (code, True), (field, details)


async def test_list_schedules_pages_by_id(harness: Harness) -> None:
    for i in range(5):
        await create(harness, schedule_id=f"s{i}", workflow_name="a" if i % 2 else "b")
    seen, token = [], ""
    while True:
        page = await harness.client.ListSchedules(
            wf.ListSchedulesRequest(page_size=2, page_token=token)
        )
        seen += [s.schedule_id for s in page.schedules]
        if not (token := page.next_page_token):
            break
    assert seen == ["s0", "s1", "s2", "s3", "s4"]
    only_a = await harness.client.ListSchedules(wf.ListSchedulesRequest(workflow_name="a"))
    assert [s.schedule_id for s in only_a.schedules] == ["s1", "s3"]
    code, _ = await status_of(
        harness.client.ListSchedules(
            wf.ListSchedulesRequest(workflow_name="b", page_size=1, page_token=_token(harness))
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # a token is bound to its filter


def _token(harness: Harness) -> str:
    from stepd.server.api.convert_schedules import encode_page_token

    return encode_page_token("s0", "a")


# -- delayed starts ---------------------------------------------------------------


async def test_a_delayed_start_is_held_in_memory_only_near_its_time(
    harness: Harness,
) -> None:
    engine = harness.running.engine
    far, near = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    far.FromMilliseconds(now_ms() + 3_600_000)
    # Far enough ahead that two triggers on a loaded machine come first.
    near.FromMilliseconds(now_ms() + 1_500)
    far_id = await harness.trigger("wf", start_time=far)
    near_id = await harness.trigger("wf", start_time=near)
    assert engine.starts.scheduled_count() == 1  # the far one stays in the store only
    worker = harness.worker("wf")
    task = await worker.next_task()
    assert task.run_id == near_id
    assert (await harness.get(near_id)).start_time.ToMilliseconds() >= near.ToMilliseconds()
    await asyncio.sleep(0.3)
    assert worker.tasks.empty()
    assert (await harness.get(far_id)).status == types_pb2.RUN_STATUS_PENDING
