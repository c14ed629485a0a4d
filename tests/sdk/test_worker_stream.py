"""Worker's PollTask stream over real gRPC, against an in-process fake server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from stepd.v1 import worker_service_pb2, worker_service_pb2_grpc

from worker_sdk import Worker, WorkflowContext, step, workflow
from worker_sdk import _worker as worker_module

from .conftest import make_task
from .fake_server import FakeStream, FakeWorkerService, start_server

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
    worker = Worker(address, [triple, blocking], concurrency=8, identity="test:1")
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
    assert not worker._ready.is_set()
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
