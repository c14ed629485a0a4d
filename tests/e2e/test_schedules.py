"""Cron schedules through a real server and worker: one run per occasion, overlap
policies, pause and resume, catch-up after the server was down, bad input."""

import asyncio
import contextlib
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from stepd import Client, RunInfo, RunStatus, StepdError
from stepd.errors import InvalidArgumentError
from stepd.schedules import Schedule
from stepd.v1 import schedules_pb2
from stepd.v1 import workflow_service_pb2 as pb
from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceStub
from tests.e2e import workflows as wf
from tests.e2e.harness import ManagedProcess, Server, Stack, release
from tests.e2e.test_signals import RESULT_TIMEOUT

EVERY_SECOND = "* * * * * *"


async def schedule_runs(client: Client, schedule_id: str) -> list[RunInfo]:
    """Every run the schedule started, oldest occasion first."""
    info = await client.get_schedule(schedule_id, recent_runs=100)
    runs = [await client.get_run(r.run_id) for r in info.recent_runs]
    return sorted(runs, key=lambda r: r.schedule_time or datetime.min.replace(tzinfo=UTC))


async def until(predicate: object, what: str) -> None:
    """Poll an async predicate until it is true."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def seconds(runs: list[RunInfo]) -> list[int]:
    """The runs' occasions as whole Unix seconds."""
    return [round(r.schedule_time.timestamp()) for r in runs if r.schedule_time]


async def test_an_every_second_schedule_starts_one_run_per_occasion(
    server: Server, worker: ManagedProcess, client: Client, tag: str
) -> None:
    # Every second, but only during this hour and the next in Kolkata (UTC+05:30): a
    # schedule read in the wrong time zone would start nothing.
    zone = ZoneInfo("Asia/Kolkata")
    hour = datetime.now(zone).hour
    cron = f"* * {hour},{(hour + 1) % 24} * * *"
    created_at = datetime.now(UTC)
    schedule = await client.create_schedule(
        wf.echo, Schedule(cron, time_zone="Asia/Kolkata", input={"tag": tag}), schedule_id=tag
    )
    assert schedule.next_occasion_times[0] > created_at
    steps = [b - a for a, b in itertools_pairs(schedule.next_occasion_times)]
    assert steps == [timedelta(seconds=1)] * (len(schedule.next_occasion_times) - 1)

    async def four_runs() -> bool:
        return len(await schedule_runs(client, tag)) >= 4

    await until(four_runs, "four occasions")
    paused = await client.pause_schedule(tag)
    runs = await schedule_runs(client, tag)
    for run in runs:
        assert await client.get_handle(run.run_id).result(timeout=RESULT_TIMEOUT) == {"tag": tag}

    occasions = seconds(runs)
    assert len(occasions) >= 4
    assert len(set(occasions)) == len(occasions), f"duplicate occasions: {occasions}"
    assert occasions == list(range(occasions[0], occasions[-1] + 1)), f"gaps: {occasions}"
    assert occasions[0] == round(schedule.next_occasion_times[0].timestamp())
    assert paused.last_occasion_time is not None
    assert occasions[-1] == round(paused.last_occasion_time.timestamp())
    for run in runs:
        assert run.schedule_id == tag and run.create_time is not None
        assert run.schedule_time is not None and run.create_time >= run.schedule_time


def itertools_pairs(items: tuple[datetime, ...]) -> list[tuple[datetime, datetime]]:
    return list(itertools.pairwise(items))


async def test_next_occasions_follow_the_time_zone(server: Server, client: Client) -> None:
    for zone in ("Europe/Paris", "America/New_York", "UTC"):
        info = await client.create_schedule("e2e.echo", Schedule("0 9 * * *", time_zone=zone))
        local = [t.astimezone(ZoneInfo(zone)) for t in info.next_occasion_times]
        assert len(local) == 5
        assert {(t.hour, t.minute, t.second) for t in local} == {(9, 0, 0)}, (zone, local)
        assert [(b - a).days for a, b in itertools_pairs(tuple(local))] == [1, 1, 1, 1]


@pytest.mark.parametrize("policy", ["skip", "allow", "cancel_previous"])
async def test_overlap_policies(
    server: Server, worker: ManagedProcess, client: Client, marks: Path, tag: str, policy: str
) -> None:
    # e2e.cancellable blocks in a step until the test releases its tag.
    await client.create_schedule(
        wf.cancellable,
        Schedule(EVERY_SECOND, input=wf.Job(tag=tag), overlap=policy),
        schedule_id=tag,
    )

    async def three_occasions() -> bool:
        return await handled_three(client, tag)

    await until(three_occasions, f"three occasions of the {policy} schedule")
    info = await client.pause_schedule(tag)
    runs = await schedule_runs(client, tag)
    release(marks, tag)

    statuses = [
        (await asyncio.wait_for(wait_finished(client, r.run_id), RESULT_TIMEOUT)).status
        for r in runs
    ]
    if policy == "skip":
        # The first run held the slot; the occasions meanwhile started nothing.
        assert statuses == [RunStatus.COMPLETED]
        assert info.last_occasion_time is not None
        assert runs[0].schedule_time is not None
        assert info.last_occasion_time > runs[0].schedule_time
    elif policy == "allow":
        assert len(runs) >= 3
        assert statuses == [RunStatus.COMPLETED] * len(runs)
    else:
        assert len(runs) >= 3
        assert statuses == [RunStatus.CANCELLED] * (len(runs) - 1) + [RunStatus.COMPLETED]
        for run in runs[:-1]:
            reason = (await client.get_run(run.run_id)).cancel_reason or ""
            assert f"schedule {tag}" in reason


async def handled_three(client: Client, schedule_id: str) -> bool:
    """The schedule handled (started a run for, or skipped) at least three occasions."""
    info = await client.get_schedule(schedule_id)
    first = info.recent_runs[-1].schedule_time if info.recent_runs else None
    last = info.last_occasion_time
    return first is not None and last is not None and last - first >= timedelta(seconds=2)


async def wait_finished(client: Client, run_id: str) -> RunInfo:
    with contextlib.suppress(StepdError):  # cancelled or failed: the status says which
        await client.get_handle(run_id).result()
    return await client.get_run(run_id)


async def test_pause_and_resume(
    server: Server, worker: ManagedProcess, client: Client, tag: str
) -> None:
    await client.create_schedule(wf.echo, Schedule(EVERY_SECOND, input=tag), schedule_id=tag)

    async def two_runs() -> bool:
        return len(await schedule_runs(client, tag)) >= 2

    await until(two_runs, "two runs")
    paused = await client.pause_schedule(tag)
    assert paused.paused and paused.next_occasion_times == ()
    assert (await client.pause_schedule(tag)).paused  # pausing twice is harmless
    before = await schedule_runs(client, tag)
    await asyncio.sleep(2.5)
    assert [r.run_id for r in await schedule_runs(client, tag)] == [r.run_id for r in before]

    resumed_at = datetime.now(UTC)
    resumed = await client.resume_schedule(tag)
    assert not resumed.paused and resumed.next_occasion_times[0] > resumed_at

    async def more_runs() -> bool:
        return len(await schedule_runs(client, tag)) >= len(before) + 2

    await until(more_runs, "runs after resuming")
    await client.pause_schedule(tag)
    after = (await schedule_runs(client, tag))[len(before) :]
    # Occasions that passed while paused started nothing.
    assert all(r.schedule_time is not None and r.schedule_time > resumed_at for r in after)
    listed = [s async for s in client.list_schedules(workflow=wf.echo)]
    assert [s.schedule_id for s in listed] == [tag]
    await client.delete_schedule(tag)
    assert [s async for s in client.list_schedules(workflow=wf.echo)] == []


async def test_trigger_now_starts_one_run_per_request_id(
    server: Server, worker: ManagedProcess, client: Client, tag: str
) -> None:
    await client.create_schedule(
        wf.echo, Schedule("0 0 1 1 *", input=tag, overlap="allow"), schedule_id=tag
    )
    first = await client.trigger_schedule(tag, request_id="r1")
    again = await client.trigger_schedule(tag, request_id="r1")
    other = await client.trigger_schedule(tag)
    assert first is not None and again is not None and other is not None
    assert first.run_id == again.run_id != other.run_id
    assert await first.result(timeout=RESULT_TIMEOUT) == tag
    info = await client.get_schedule(tag)
    assert sorted(r.run_id for r in info.recent_runs) == sorted([first.run_id, other.run_id])


@pytest.mark.parametrize("catchup", ["skip", "run_once"])
async def test_occasions_missed_while_the_server_was_down(
    stack: Stack, server: Server, tag: str, catchup: str
) -> None:
    stack.start_worker(server)
    # Two occasions a few seconds ahead (once a year), in one minute.
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    if first.minute != (first + timedelta(seconds=1)).minute:
        first += timedelta(seconds=2)
    second = first + timedelta(seconds=1)
    cron = f"{first.second},{second.second} {first.minute} {first.hour} {first.day} {first.month} *"
    async with Client(server.address) as client:
        await client.create_schedule(
            wf.echo, Schedule(cron, input=tag, catchup=catchup), schedule_id=tag
        )
    assert server.process.kill() < 0  # down before the first occasion, by SIGKILL

    await asyncio.sleep((second + timedelta(seconds=1) - datetime.now(UTC)).total_seconds())
    again = stack.start_server(server.database, address=server.address)
    async with Client(again.address) as client:
        if catchup == "run_once":

            async def caught_up() -> bool:
                return bool(await schedule_runs(client, tag))

            await until(caught_up, "the catch-up run")
        await asyncio.sleep(1.5)  # time for a wrong (second) run to start
        runs = await schedule_runs(client, tag)
        if catchup == "skip":
            assert runs == []
        else:
            # One run for both missed occasions, for the latest.
            assert seconds(runs) == [round(second.timestamp())]
            result = await client.get_handle(runs[0].run_id).result(timeout=RESULT_TIMEOUT)
            assert result == tag
        info = await client.get_schedule(tag)
        assert info.next_occasion_times[0] > second  # next year


async def test_occasions_are_not_repeated_across_a_restart(
    stack: Stack, server: Server, tag: str
) -> None:
    stack.start_worker(server)
    async with Client(server.address) as client:
        await client.create_schedule(
            wf.echo, Schedule(EVERY_SECOND, input=tag, overlap="allow"), schedule_id=tag
        )
        await asyncio.sleep(2.5)
    assert server.process.kill() < 0
    again = stack.start_server(server.database, address=server.address)
    async with Client(again.address) as client:
        await asyncio.sleep(2.5)
        await client.pause_schedule(tag)
        occasions = seconds(await schedule_runs(client, tag))
    assert len(set(occasions)) == len(occasions), f"duplicate occasions: {occasions}"
    assert occasions == sorted(occasions) and len(occasions) >= 2


async def test_invalid_schedules_are_rejected_naming_the_field(
    server: Server, client: Client, channel: grpc.aio.Channel
) -> None:
    stub = WorkflowServiceStub(channel)
    cases = {
        "not a cron": "spec.cron",
        "61 * * * *": "spec.cron",
        "0 0 31 2 *": "spec.cron",  # never fires
        "": "spec.cron",
    }
    for cron, field in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateSchedule(
                pb.CreateScheduleRequest(
                    workflow_name="e2e.echo", spec=schedules_pb2.ScheduleSpec(cron=cron)
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or ""), (cron, caught.value.details())
    for zone in ("Mars/Olympus_Mons", "../../etc/passwd", "utc+1"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateSchedule(
                pb.CreateScheduleRequest(
                    workflow_name="e2e.echo",
                    spec=schedules_pb2.ScheduleSpec(cron="* * * * *", time_zone=zone),
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.time_zone" in (caught.value.details() or "")
    # The SDK checks before sending; the server's message arrives through the SDK too.
    with pytest.raises(ValueError, match="time zone"):
        Schedule("* * * * *", time_zone="Nowhere/Land")
    with pytest.raises(InvalidArgumentError, match=r"spec\.cron"):
        await client.create_schedule("e2e.echo", Schedule("0 0 30 2 *"))
    assert [s async for s in client.list_schedules()] == []
