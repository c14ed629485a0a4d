"""One worker message cannot stall or bloat the server: a command batch, a hello
and the registry of versions are bounded; past a bound the stream ends with
its status and a short reason, one line in the log, and the server serves on
(both backends). The SDK's own worker stays within the bounds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from stepd import Client, RunFailedError, Worker, WorkflowContext, step, workflow
from stepd.v1 import types_pb2, worker_service_pb2
from tests.server.conftest import Harness

POLL_TASK = "/stepd.v1.WorkerService/PollTask"
MAX_BATCH = 1000
MAX_WORKFLOWS_PER_HELLO = 1000
MAX_VERSIONS_PER_HELLO = 100
MAX_VERSIONS = 1000
MAX_EVENT_TRIGGERS = 32


def hello(
    workflows: Sequence[tuple[str, str]] = (("limits.wf", "1"),),
    registrations: list[worker_service_pb2.WorkflowRegistration] | None = None,
    **fields: Any,
) -> worker_service_pb2.PollTaskRequest:
    settings: dict[str, Any] = {"worker_id": "limits", "identity": "limits", "capacity": 4}
    settings.update(fields)
    if registrations is None:
        registrations = [
            worker_service_pb2.WorkflowRegistration(name=n, version=v) for n, v in workflows
        ]
    return worker_service_pb2.PollTaskRequest(
        hello=worker_service_pb2.WorkerHello(workflows=registrations, **settings)
    )


async def stream_end(
    harness: Harness, *messages: worker_service_pb2.PollTaskRequest | bytes
) -> grpc.aio.AioRpcError:
    """Send ``messages`` (or raw bytes) on a PollTask stream; return the error the
    server ends it with."""

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message if isinstance(message, bytes) else message.SerializeToString()
        await asyncio.sleep(20)  # the server must end the stream

    call = harness.channel.stream_stream(
        POLL_TASK, request_serializer=None, response_deserializer=None
    )(requests())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(15):
            async for _ in call:
                pass
    return raised.value


async def connects(harness: Harness, request: worker_service_pb2.PollTaskRequest) -> None:
    """The hello is accepted: the server answers with its stream settings."""

    async def requests() -> AsyncIterator[bytes]:
        yield request.SerializeToString()
        await asyncio.sleep(20)

    call = harness.channel.stream_stream(
        POLL_TASK, request_serializer=None, response_deserializer=None
    )(requests())
    try:
        async with asyncio.timeout(15):
            raw = await call.read()
            assert isinstance(raw, bytes), raw
            first = worker_service_pb2.PollTaskResponse.FromString(raw)
        assert first.HasField("settings")
    finally:
        call.cancel()


def refused(error: grpc.aio.AioRpcError, code: grpc.StatusCode, *words: str) -> None:
    message = error.details() or ""
    assert error.code() is code, (error.code(), message)
    for word in words:
        assert word in message, message
    assert len(message) < 400, message


async def still_serves(harness: Harness) -> None:
    worker = harness.worker("limits.ok")
    run_id = await harness.trigger("limits.ok")
    task = await worker.next_task(10)
    assert (await worker.complete(task, '"ok"')).status == worker_service_pb2.COMMAND_STATUS_OK
    assert (await harness.get(run_id, wait=True)).result.json == '"ok"'


def command(i: int) -> worker_service_pb2.WorkerCommand:
    return worker_service_pb2.WorkerCommand(
        command_id=i, run_id="r", lease_id=1, release_run=worker_service_pb2.ReleaseRunCommand()
    )


async def test_a_batch_over_the_limit_ends_the_stream(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stepd")
    batch = worker_service_pb2.PollTaskRequest(
        commands=worker_service_pb2.WorkerCommandBatch(
            commands=[command(i) for i in range(MAX_BATCH + 1)]
        )
    )
    error = await stream_end(harness, hello(), batch)
    refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, str(MAX_BATCH), "commands")
    lines = [r for r in caplog.records if "PollTask ended" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno < logging.ERROR, lines
    assert not [r for r in caplog.records if r.exc_info]
    await still_serves(harness)


async def test_a_batch_at_the_limit_is_answered(harness: Harness) -> None:
    worker = harness.worker("limits.batch")
    run_id = await harness.trigger("limits.batch")
    task = await worker.next_task(10)
    # Announced step attempts: answered without a write each.
    steps = [
        {
            "start_step": worker_service_pb2.StartStepCommand(
                step_key=f"s{i}", attempt=1, timeout=Duration(seconds=600)
            )
        }
        for i in range(MAX_BATCH)
    ]
    results = await worker.send_batch(task, *steps)
    assert {r.status for r in results} == {worker_service_pb2.COMMAND_STATUS_OK}
    assert (await worker.complete(task, "1")).status == worker_service_pb2.COMMAND_STATUS_OK
    assert (await harness.get(run_id, wait=True)).result.json == "1"


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (
            hello([(f"limits.many{i}", "1") for i in range(MAX_WORKFLOWS_PER_HELLO + 1)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ("1000", "workflow"),
        ),
        (
            hello([("limits.v", str(v)) for v in range(MAX_VERSIONS_PER_HELLO + 1)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ("100", "versions"),
        ),
        (
            hello(
                registrations=[
                    worker_service_pb2.WorkflowRegistration(
                        name="limits.ev",
                        version="1",
                        event_triggers=[f"e{i}" for i in range(MAX_EVENT_TRIGGERS + 1)],
                    )
                ]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ("event triggers",),
        ),
        (
            hello(
                registrations=[
                    worker_service_pb2.WorkflowRegistration(
                        name="limits.ev2",
                        version="1",
                        event_triggers=[f"e{i}" for i in range(100_000)],
                    )
                ]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            ("event triggers",),
        ),
        (hello(capacity=10_001), grpc.StatusCode.INVALID_ARGUMENT, ("capacity",)),
        (hello(capacity=0), grpc.StatusCode.INVALID_ARGUMENT, ("capacity",)),
        (hello(max_cached_runs=2**31), grpc.StatusCode.INVALID_ARGUMENT, ("max_cached_runs",)),
        (hello(early_capacity=10_001), grpc.StatusCode.INVALID_ARGUMENT, ("early_capacity",)),
        (
            hello(
                registrations=[
                    worker_service_pb2.WorkflowRegistration(
                        name="limits.t",
                        version="1",
                        execution_timeout=Duration(seconds=300_000_000_000),
                    )
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            ("execution_timeout",),
        ),
        (hello(identity="x" * 1001), grpc.StatusCode.INVALID_ARGUMENT, ("identity",)),
        (hello(worker_id="x" * 201), grpc.StatusCode.INVALID_ARGUMENT, ("worker_id",)),
    ],
    ids=[
        "workflows",
        "versions",
        "event-triggers",
        "event-triggers-many",
        "capacity-high",
        "capacity-zero",
        "cached-runs",
        "early-capacity",
        "execution-timeout",
        "identity",
        "worker-id",
    ],
)
async def test_a_hello_over_a_limit_is_refused(
    harness: Harness,
    request_: worker_service_pb2.PollTaskRequest,
    code: grpc.StatusCode,
    words: tuple[str, ...],
) -> None:
    error = await stream_end(harness, request_)
    refused(error, code, *words)
    await still_serves(harness)


async def test_a_hello_at_the_limits_connects(harness: Harness) -> None:
    registrations = [
        worker_service_pb2.WorkflowRegistration(
            name=f"limits.at{i // MAX_VERSIONS_PER_HELLO}",
            version=str(i % MAX_VERSIONS_PER_HELLO),
            event_triggers=[f"limits.event{j}" for j in range(MAX_EVENT_TRIGGERS)],
        )
        for i in range(MAX_WORKFLOWS_PER_HELLO)
    ]
    await connects(harness, hello(registrations=registrations, capacity=10_000))
    await still_serves(harness)


async def test_the_registry_keeps_a_bounded_number_of_versions(harness: Harness) -> None:
    for first in range(0, MAX_VERSIONS, MAX_VERSIONS_PER_HELLO):
        versions = [("limits.grow", str(v)) for v in range(first, first + MAX_VERSIONS_PER_HELLO)]
        await connects(harness, hello(versions))
    # Versions registered before still connect; one more is refused.
    await connects(harness, hello([("limits.grow", "0"), ("limits.grow", "999")]))
    error = await stream_end(harness, hello([("limits.grow", "new")]))
    refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "versions", "limits.grow")
    rows = await harness.query("SELECT COUNT(*) FROM workflow_versions WHERE name = 'limits.grow'")
    assert rows[0][0] == MAX_VERSIONS
    await still_serves(harness)


@step
async def tiny(i: int) -> int:
    return i


@workflow(name="limits.fan_out")
async def fan_out(ctx: WorkflowContext, n: int) -> int:
    values = await asyncio.gather(*(tiny(i) for i in range(n)))
    return sum(values)


async def test_the_sdk_worker_splits_its_batches(harness: Harness) -> None:
    """1,500 steps finish together: their records go in batches under the limit."""
    async with Client(harness.address) as client:
        worker = Worker(client, workflows=[fan_out], shutdown_grace=1)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.wait_ready(), 30)
            result = await client.execute(fan_out, 1500, timeout=120)
            assert result == sum(range(1500))
        finally:
            await worker.stop()
            await task


async def test_a_message_over_the_byte_limit_ends_the_stream(harness: Harness) -> None:
    settings = await harness.worker("limits.settings").settings
    assert settings.max_message_bytes == 4 << 20  # the 2 MiB payload limit and 1 MiB, or 4 MiB

    def batch(chars: int) -> worker_service_pb2.PollTaskRequest:
        step = types_pb2.StepRecord(
            step_key="s", attempt=1, result=types_pb2.Payload(json='"' + "x" * chars + '"')
        )
        command = worker_service_pb2.WorkerCommand(
            command_id=1,
            run_id="r",
            lease_id=1,
            record_step=worker_service_pb2.RecordStepCommand(step=step),
        )
        return worker_service_pb2.PollTaskRequest(
            commands=worker_service_pb2.WorkerCommandBatch(commands=[command])
        )

    error = await stream_end(harness, hello(), batch(5 << 20))
    refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "bytes", str(4 << 20))
    # A hello may be larger (up to 16 MiB), but not when it carries anything else.
    with_hello = hello().SerializeToString() + batch(5 << 20).SerializeToString()
    error = await stream_end(harness, with_hello)
    refused(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "bytes", str(4 << 20))
    await still_serves(harness)


#: Past the 64 MiB a gRPC message may carry.
HUGE = 70 * 1024 * 1024


@step
async def huge_result() -> str:
    return "x" * HUGE


@workflow(name="limits.huge_result")
async def returns_huge(ctx: WorkflowContext) -> int:
    return len(await huge_result())


@workflow(name="limits.huge_error")
async def raises_huge(ctx: WorkflowContext) -> None:
    raise ValueError("y" * HUGE)


async def test_the_sdk_never_sends_a_message_too_large(harness: Harness) -> None:
    """A step result or an error far past every limit fails its run once; it does
    not end the worker's stream (which would hand the run out again forever)."""
    async with Client(harness.address) as client:
        worker = Worker(client, workflows=[returns_huge, raises_huge], shutdown_grace=1)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.wait_ready(), 30)
            with pytest.raises(RunFailedError) as failed:
                await client.execute(returns_huge, None, timeout=120)
            assert failed.value.error_type == "stepd.PayloadTooLarge", failed.value
            assert failed.value.info.dispatch_count == 1
            with pytest.raises(RunFailedError) as failed:
                await client.execute(raises_huge, None, timeout=120)
            info = failed.value.info
            assert info.error_type == "builtins.ValueError", info.error_type
            assert len(info.error_message or "") <= 16 * 1024
            assert info.dispatch_count == 1
        finally:
            await worker.stop()
            await task
