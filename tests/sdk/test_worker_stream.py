"""Worker's PollTask stream over real gRPC, against an in-process fake server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from stepd import Worker, WorkflowContext, step, workflow
from stepd import _worker as worker_module
from stepd.v1 import worker_service_pb2, worker_service_pb2_grpc

from .conftest import make_task
from .fake_server import FakeStream, FakeWorkerService, settings, start_server

events: list[str] = []
gate: asyncio.Event | None = None


@pytest.fixture(autouse=True)
def _reset() -> None:
    global gate
    events.clear()
    gate = None


@step
async def double(x: int) -> int:
    return x * 2


@step
async def blocked(label: str) -> str:
    events.append(f"{label}:start")
    assert gate is not None
    try:
        await gate.wait()
    except asyncio.CancelledError:
        events.append(f"{label}:cancelled")
        raise
    return label


@workflow(name="triple")
async def triple(ctx: WorkflowContext, x: int) -> int:
    a = await double(x)
    b, c = await asyncio.gather(double(a), double(a))
    return a + b + c


@workflow(name="blocking", version=3)
async def blocking(ctx: WorkflowContext) -> str:
    return await blocked("hold")


Running = tuple[FakeWorkerService, Worker, FakeStream]


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeWorkerService, str]]:
    fake = FakeWorkerService()
    server, address = await start_server(fake)
    yield fake, address
    await server.stop(None)


@pytest.fixture
async def running(
    service: tuple[FakeWorkerService, str],
) -> AsyncIterator[Running]:
    fake, address = service
    worker = Worker(address, [triple, blocking], concurrency=8, identity="test:1", shutdown_grace=5)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.wait_ready(), 5)
    stream = await fake.wait_streams(1)
    yield fake, worker, stream
    await worker.stop()
    await task


def task_for(
    name: str, version: str, run_id: str, value: object = None, lease: int = 1
) -> worker_service_pb2.RunTask:
    return make_task(name, version, input=value, run_id=run_id, lease_id=lease)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling what the fake server saw
            await asyncio.sleep(0.005)


def finals(stream: FakeStream) -> dict[str, worker_service_pb2.WorkerCommand]:
    return {
        c.run_id: c
        for c in stream.commands()
        if c.WhichOneof("command") in ("complete_run", "fail_run", "release_run")
    }


async def test_hello_describes_the_worker(running: Running) -> None:
    _, worker, stream = running
    hello = stream.hello
    assert hello.worker_id == worker.worker_id and len(hello.worker_id) == 32
    assert hello.identity == "test:1"
    assert hello.capacity == 8
    assert hello.sdk_version.startswith("stepd-python/")
    assert sorted((w.name, w.version) for w in hello.workflows) == [
        ("blocking", "3"),
        ("triple", "1"),
    ]


async def test_runs_complete_and_commands_are_batched(running: Running) -> None:
    _, _, stream = running
    stream.push(tasks=[task_for("triple", "1", f"r{i}", i, lease=i + 1) for i in range(40)])
    await until(lambda: len(finals(stream)) == 40)
    done = finals(stream)
    for i in range(40):
        command = done[f"r{i}"]
        assert command.lease_id == i + 1
        assert json.loads(command.complete_run.result.json) == 2 * i + 8 * i
    commands = stream.commands()
    assert len(commands) == 40 * 4
    assert len({c.command_id for c in commands}) == len(commands)  # unique on the stream
    assert stream.command_messages() < len(commands) / 4  # several commands per message


async def test_cancellation_stops_the_run_and_sends_nothing(running: Running) -> None:
    global gate
    gate = asyncio.Event()
    _, _, stream = running
    stream.push(tasks=[task_for("blocking", "3", "c1", lease=5)])
    await until(lambda: "hold:start" in events)
    stream.push(
        cancellations=[worker_service_pb2.RunCancellation(run_id="c1", lease_id=4, reason="old")]
    )
    await asyncio.sleep(0.05)
    assert "hold:cancelled" not in events  # another lease: ignored
    stream.push(
        cancellations=[worker_service_pb2.RunCancellation(run_id="c1", lease_id=5, reason="x")]
    )
    await until(lambda: "hold:cancelled" in events)
    gate.set()
    await asyncio.sleep(0.05)
    assert stream.commands() == []


async def test_lease_lost_abandons_the_run(running: Running) -> None:
    fake, _, stream = running
    fake.answer = lambda _: worker_service_pb2.CommandResult(
        status=worker_service_pb2.COMMAND_STATUS_LEASE_LOST
    )
    stream.push(tasks=[task_for("triple", "1", "l1", 1)])
    await asyncio.sleep(0.1)
    assert [c.WhichOneof("command") for c in stream.commands()] == ["record_step"]


async def test_unknown_workflow_is_released(running: Running) -> None:
    _, _, stream = running
    stream.push(tasks=[task_for("triple", "9", "u1")])
    await until(lambda: "u1" in finals(stream))
    assert finals(stream)["u1"].WhichOneof("command") == "release_run"


async def test_stream_end_abandons_runs_and_reconnects(running: Running) -> None:
    global gate
    gate = asyncio.Event()
    fake, _, stream = running
    stream.push(tasks=[task_for("blocking", "3", "s1")])
    await until(lambda: "hold:start" in events)
    stream.close()
    await until(lambda: "hold:cancelled" in events)
    second = await fake.wait_streams(2)
    assert second.hello.worker_id == stream.hello.worker_id
    assert stream.commands() == []
    # The new stream serves new tasks.
    second.push(tasks=[task_for("triple", "1", "s2", 1)])
    await until(lambda: "s2" in finals(second))


@workflow(name="napper")
async def napper(ctx: WorkflowContext, x: int) -> int:
    a = await double(x)
    await ctx.sleep(60)
    return a + 1


async def test_a_sleeping_run_is_suspended_and_woken_by_a_new_task(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    worker = Worker(address, [napper], concurrency=1, shutdown_grace=5)
    task = asyncio.create_task(worker.run())
    stream = await fake.wait_streams(1)
    stream.push(tasks=[task_for("napper", "1", "n1", 5, lease=1)])
    await until(lambda: stream.kinds("n1") == ["record_step", "suspend_run"])
    [suspend] = [c for c in stream.commands() if c.HasField("suspend_run")]
    assert suspend.lease_id == 1
    assert [w.wait_key for w in suspend.suspend_run.waits] == ["sleep:1"]
    session = worker._session
    assert session is not None
    await until(lambda: not session._runs)  # the worker holds nothing for the run
    # The timer fired: the server hands the run out again, the wait met in its journal.
    woken = make_task(
        "napper", "1", input=5, run_id="n1", lease_id=2, journal={"double": 10}, met=["sleep:1"]
    )
    stream.push(tasks=[woken])
    await until(lambda: "n1" in finals(stream))
    assert stream.kinds("n1") == ["record_step", "suspend_run", "complete_run"]
    assert finals(stream)["n1"].complete_run.result.json == "11"
    await worker.stop()
    await asyncio.wait_for(task, 5)


async def test_heartbeats_when_idle(
    service: tuple[FakeWorkerService, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "HEARTBEAT_INTERVAL", 0.05)
    fake, address = service
    async with Worker(address, [triple]) as worker:
        task = asyncio.create_task(worker.run())
        stream = await fake.wait_streams(1)
        await until(lambda: stream.heartbeats() >= 3)
        assert stream.requests[1].heartbeat.HasField("send_time")
    assert task.done()


async def test_stop_closes_the_stream(service: tuple[FakeWorkerService, str]) -> None:
    fake, address = service
    worker = Worker(address, [triple])
    task = asyncio.create_task(worker.run())
    stream = await fake.wait_streams(1)
    await worker.stop()
    await asyncio.wait_for(task, 5)
    await asyncio.wait_for(stream.ended.wait(), 5)
    await worker.stop()  # idempotent


async def test_cancelling_run_stops_the_worker(service: tuple[FakeWorkerService, str]) -> None:
    fake, address = service
    worker = Worker(address, [triple])
    task = asyncio.create_task(worker.run())
    stream = await fake.wait_streams(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(stream.ended.wait(), 5)


async def test_reconnects_with_backoff_until_the_server_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:  # a port with nothing listening (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = Worker(f"127.0.0.1:{port}", [triple])
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.3)
    assert not worker._serving.ready.is_set()
    fake = FakeWorkerService()
    server = grpc.aio.server()
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await asyncio.wait_for(worker.wait_ready(), 10)
        await fake.wait_streams(1)
    finally:
        await worker.stop()
        await task
        await server.stop(None)


# -- heartbeats follow the server's StreamSettings ----------------------------------------


@step
async def tick(delay: float) -> None:
    await asyncio.sleep(delay)


@workflow(name="ticking")
async def ticking(ctx: WorkflowContext, count: int) -> int:
    for _ in range(count):
        await tick(0.04)
    return count


async def test_heartbeat_interval_follows_stream_settings(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    fake.settings = settings(heartbeat=0.2, lease=1.0)
    worker = Worker(address, [ticking])
    task = asyncio.create_task(worker.run())
    try:
        stream = await fake.wait_streams(1)
        await until(lambda: stream.heartbeats() >= 4, within=3)
        beats = stream.times_of("heartbeat")
        gaps = [b - a for a, b in zip([stream.times[0], *beats], beats, strict=False)]
        assert all(0.15 <= gap <= 0.45 for gap in gaps), gaps  # not the 10 s default
    finally:
        await worker.stop()
        await task


async def test_no_heartbeat_while_commands_flow(service: tuple[FakeWorkerService, str]) -> None:
    fake, address = service
    fake.settings = settings(heartbeat=0.2, lease=1.0)
    worker = Worker(address, [ticking])
    task = asyncio.create_task(worker.run())
    try:
        stream = await fake.wait_streams(1)
        await until(lambda: stream.heartbeats() >= 1, within=3)
        stream.push(tasks=[task_for("ticking", "1", "t1", 15)])  # a command every ~0.04 s
        await until(lambda: "t1" in finals(stream), within=5)
        commands = stream.times_of("commands")
        assert commands[-1] - commands[0] > 0.45  # longer than two heartbeat intervals
        during = [t for t in stream.times_of("heartbeat") if commands[0] < t < commands[-1]]
        assert during == []
        await until(lambda: stream.times_of("heartbeat")[-1] > commands[-1], within=3)
    finally:
        await worker.stop()
        await task


async def test_a_heartbeat_longer_than_the_lease_is_shortened(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    fake.settings = settings(heartbeat=30, lease=0.6)  # misconfigured server
    worker = Worker(address, [ticking])
    task = asyncio.create_task(worker.run())
    try:
        stream = await fake.wait_streams(1)
        await until(lambda: stream.heartbeats() >= 2, within=3)
    finally:
        await worker.stop()
        await task


# -- graceful shutdown --------------------------------------------------------------------


@step
async def after(label: str) -> str:
    events.append(f"{label}:after")
    return label


@workflow(name="two_steps")
async def two_steps(ctx: WorkflowContext) -> str:
    first = await blocked("hold")
    return await after(first)


@pytest.fixture
async def stoppable(
    service: tuple[FakeWorkerService, str],
) -> AsyncIterator[Running]:
    """A worker serving two_steps and blocking; the test stops it."""
    global gate
    gate = asyncio.Event()
    fake, address = service
    worker = Worker(address, [two_steps, blocking, triple], shutdown_grace=10)
    task = asyncio.create_task(worker.run())
    stream = await fake.wait_streams(1)
    # Stopped before the server's first answer, a worker only drops its stream
    # (nothing can be held yet); these tests stop a registered one.
    await asyncio.wait_for(worker.wait_ready(), 5)
    yield fake, worker, stream
    gate.set()
    await worker.stop(0)
    await asyncio.wait_for(task, 5)


async def test_stop_sends_drain_and_closes_the_stream(stoppable: Running) -> None:
    _, worker, stream = stoppable
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(worker.stop(reason="SIGTERM"), 5)
    assert loop.time() - started < 1  # nothing held: no grace to wait
    # The fake server reads the stream on its own task: let it see the end.
    await asyncio.wait_for(stream.ended.wait(), 5)
    assert [d.reason for d in stream.drains()] == ["SIGTERM"]
    assert stream.half_closed  # the worker ended the stream cleanly


async def test_a_run_is_released_at_its_next_step_after_drain(stoppable: Running) -> None:
    _, worker, stream = stoppable
    stream.push(tasks=[task_for("two_steps", "1", "d1", lease=3)])
    await until(lambda: "hold:start" in events)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.create_task(worker.stop())
    await until(lambda: bool(stream.drains()))
    await asyncio.sleep(0.1)
    assert stream.commands() == []  # the step in flight goes on
    assert not stopping.done()
    assert gate is not None
    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert loop.time() - started < 3  # released at once, not at the end of the grace
    assert stream.kinds("d1") == ["record_step", "release_run"]
    release = stream.commands()[-1]
    assert (release.lease_id, release.release_run.reason) == (3, "worker shutting down")
    assert "hold:after" not in events  # the next step never started
    assert stream.ended.is_set()


async def test_a_step_outliving_the_grace_is_cancelled_and_released(stoppable: Running) -> None:
    _, worker, stream = stoppable
    stream.push(tasks=[task_for("blocking", "3", "g1")])
    await until(lambda: "hold:start" in events)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(worker.stop(grace=0.3), 5)
    assert 0.3 <= loop.time() - started < 3
    assert "hold:cancelled" in events
    assert stream.kinds("g1") == ["release_run"]  # no record of the cancelled step
    assert stream.ended.is_set()


async def test_a_second_stop_skips_the_grace(stoppable: Running) -> None:
    _, worker, stream = stoppable
    stream.push(tasks=[task_for("blocking", "3", "g2")])
    await until(lambda: "hold:start" in events)
    first = asyncio.create_task(worker.stop())  # 10 s grace
    await until(lambda: bool(stream.drains()))
    await asyncio.wait_for(worker.stop(0), 3)
    await asyncio.wait_for(first, 1)
    assert "hold:cancelled" in events
    assert stream.kinds("g2") == ["release_run"]


async def test_tasks_arriving_after_drain_are_released_unstarted(stoppable: Running) -> None:
    _, worker, stream = stoppable
    stream.push(tasks=[task_for("blocking", "3", "g3")])
    await until(lambda: "hold:start" in events)
    stopping = asyncio.create_task(worker.stop())
    await until(lambda: bool(stream.drains()))
    stream.push(tasks=[task_for("triple", "1", "late", 1)])  # sent before the drain arrived
    await until(lambda: bool(stream.kinds("late")))
    assert stream.kinds("late") == ["release_run"]
    assert gate is not None
    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert stream.kinds("g3") == ["record_step", "complete_run"]  # it finished: completed


# -- cancellation and lost leases stop every step of the run -------------------------------

thread_gate = threading.Event()


@step
def blocked_in_thread(label: str) -> str:
    events.append(f"{label}:start")
    thread_gate.wait(5)
    events.append(f"{label}:end")
    return label


@workflow(name="fanned")
async def fanned(ctx: WorkflowContext) -> list[str]:
    return list(await asyncio.gather(blocked("a"), blocked("b"), blocked_in_thread("t")))


@workflow(name="half_fast")
async def half_fast(ctx: WorkflowContext) -> list[object]:
    return list(await asyncio.gather(double(1), blocked("slow")))


async def test_cancellation_in_gather_cancels_every_step(
    service: tuple[FakeWorkerService, str],
) -> None:
    global gate
    gate = asyncio.Event()
    thread_gate.clear()
    fake, address = service
    worker = Worker(address, [fanned, triple], concurrency=1)
    task = asyncio.create_task(worker.run())
    try:
        stream = await fake.wait_streams(1)
        stream.push(tasks=[task_for("fanned", "1", "f1", lease=2)])
        await until(lambda: {"a:start", "b:start", "t:start"} <= set(events))
        stream.push(cancellations=[worker_service_pb2.RunCancellation(run_id="f1", lease_id=2)])
        await until(lambda: {"a:cancelled", "b:cancelled"} <= set(events))
        thread_gate.set()  # the abandoned thread finishes: its result is dropped
        gate.set()
        await until(lambda: "t:end" in events)
        # The slot is free: the next run is served.
        stream.push(tasks=[task_for("triple", "1", "f2", 1)])
        await until(lambda: "f2" in finals(stream))
        assert stream.kinds("f1") == []
    finally:
        thread_gate.set()
        await worker.stop(0)
        await task


async def test_lease_lost_cancels_the_other_steps_of_the_run(
    service: tuple[FakeWorkerService, str],
) -> None:
    global gate
    gate = asyncio.Event()
    fake, address = service
    fake.answer = lambda _: worker_service_pb2.CommandResult(
        status=worker_service_pb2.COMMAND_STATUS_LEASE_LOST, message="re-queued"
    )
    worker = Worker(address, [half_fast])
    task = asyncio.create_task(worker.run())
    try:
        stream = await fake.wait_streams(1)
        stream.push(tasks=[task_for("half_fast", "1", "h1")])
        await until(lambda: "slow:cancelled" in events)
        gate.set()
        await asyncio.sleep(0.1)
        assert stream.kinds("h1") == ["record_step"]  # double's, answered LEASE_LOST
        assert stream.commands()[0].record_step.step.step_key == "double"
    finally:
        await worker.stop(0)
        await task


# -- reconnect --------------------------------------------------------------------------


async def test_reconnects_when_the_server_restarts_on_the_same_address() -> None:
    global gate
    gate = asyncio.Event()
    fake = FakeWorkerService()
    server, address = await start_server(fake)
    port = int(address.rsplit(":", 1)[1])
    worker = Worker(address, [blocking, triple])
    task = asyncio.create_task(worker.run())
    restarted = None
    try:
        stream = await fake.wait_streams(1)
        stream.push(tasks=[task_for("blocking", "3", "r1")])
        await until(lambda: "hold:start" in events)
        await server.stop(None)  # the server goes away: the held run is abandoned
        await until(lambda: "hold:cancelled" in events)
        await asyncio.sleep(1.5)  # down for a while: the worker keeps retrying
        fake2 = FakeWorkerService()
        restarted, _ = await start_server(fake2, port=port)
        second = await fake2.wait_streams(1, within=8)
        assert second.hello.worker_id == stream.hello.worker_id
        second.push(tasks=[task_for("triple", "1", "r2", 1)])
        await until(lambda: "r2" in finals(second))
        assert stream.commands() == []
    finally:
        gate.set()
        await worker.stop(0)
        await task
        if restarted is not None:
            await restarted.stop(None)
