"""An in-process stepd server on port 0 with a fresh database (per backend),
and a raw protobuf worker to drive the PollTask stream message by message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from stepd.server.config import ServerConfig
from stepd.server.server import RunningServer, create_server
from stepd.v1 import (
    types_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_service_pb2_grpc,
)
from stepd.v1 import workflow_service_pb2 as wf
from tests.backends import query


class RawWorker:
    """A worker speaking the PollTask protocol by hand."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        workflows: list[str],
        capacity: int,
        *,
        version: str = "1",
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._queue: asyncio.Queue[worker_service_pb2.PollTaskRequest | None] = asyncio.Queue()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[worker_service_pb2.CommandResult]] = {}
        self.tasks: asyncio.Queue[worker_service_pb2.RunTask] = asyncio.Queue()
        self.cancellations: asyncio.Queue[worker_service_pb2.RunCancellation] = asyncio.Queue()
        self.settings: asyncio.Future[worker_service_pb2.StreamSettings] = (
            asyncio.get_running_loop().create_future()
        )
        self.ended = asyncio.Event()
        hello = worker_service_pb2.WorkerHello(
            worker_id=f"raw-{id(self)}",
            identity="raw-worker",
            workflows=[
                worker_service_pb2.WorkflowRegistration(name=n, version=version) for n in workflows
            ],
            capacity=capacity,
        )
        self._queue.put_nowait(worker_service_pb2.PollTaskRequest(hello=hello))
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        self.call = stub.PollTask(self._requests(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[worker_service_pb2.PollTaskRequest]:
        while (item := await self._queue.get()) is not None:
            yield item

    async def _read(self) -> None:
        try:
            await self._read_responses()
        finally:
            self.ended.set()

    async def _read_responses(self) -> None:
        async for response in self.call:
            if response.HasField("settings") and not self.settings.done():
                self.settings.set_result(response.settings)
            for task in response.tasks:
                self.tasks.put_nowait(task)
            for result in response.results:
                self._pending.pop(result.command_id).set_result(result)
            for cancellation in response.cancellations:
                self.cancellations.put_nowait(cancellation)

    async def next_task(self, seconds: float = 5) -> worker_service_pb2.RunTask:
        return await asyncio.wait_for(self.tasks.get(), seconds)

    async def send(
        self, task: worker_service_pb2.RunTask, **command: Any
    ) -> worker_service_pb2.CommandResult:
        """Send one command for ``task`` (e.g. complete_run=...) and await its result."""
        (result,) = await self.send_batch(task, command)
        return result

    async def send_batch(
        self, task: worker_service_pb2.RunTask, *commands: dict[str, Any]
    ) -> list[worker_service_pb2.CommandResult]:
        """Send several commands for ``task`` in one stream message; await their results."""
        futures = await self.queue_batch(task, *commands)
        return list(await asyncio.wait_for(asyncio.gather(*futures), 5))

    async def queue_batch(
        self, task: worker_service_pb2.RunTask, *commands: dict[str, Any]
    ) -> list[asyncio.Future[worker_service_pb2.CommandResult]]:
        """Send several commands for ``task`` in one stream message; return the
        futures of their results without waiting for them."""
        futures = []
        messages = []
        for command in commands:
            self._next_id += 1
            future: asyncio.Future[worker_service_pb2.CommandResult] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending[self._next_id] = future
            futures.append(future)
            messages.append(
                worker_service_pb2.WorkerCommand(
                    command_id=self._next_id, run_id=task.run_id, lease_id=task.lease_id, **command
                )
            )
        batch = worker_service_pb2.WorkerCommandBatch(commands=messages)
        await self._queue.put(worker_service_pb2.PollTaskRequest(commands=batch))
        return futures

    async def record(
        self, task: worker_service_pb2.RunTask, key: str, result_json: str
    ) -> worker_service_pb2.CommandResult:
        step = types_pb2.StepRecord(
            step_key=key, attempt=1, result=types_pb2.Payload(json=result_json)
        )
        return await self.send(task, record_step=worker_service_pb2.RecordStepCommand(step=step))

    async def complete(
        self, task: worker_service_pb2.RunTask, result_json: str
    ) -> worker_service_pb2.CommandResult:
        cmd = worker_service_pb2.CompleteRunCommand(result=types_pb2.Payload(json=result_json))
        return await self.send(task, complete_run=cmd)

    async def put(self, request: worker_service_pb2.PollTaskRequest) -> None:
        """Send a raw request on the stream."""
        await self._queue.put(request)

    async def close(self) -> None:
        await self._queue.put(None)
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class Harness:
    """A running in-process server and a client stub to it."""

    def __init__(self, running: RunningServer, database: str) -> None:
        self.running = running
        self.database = database
        self.address = f"127.0.0.1:{running.port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.client = workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)
        self.workers: list[RawWorker] = []

    def worker(
        self,
        *workflows: str,
        capacity: int = 10,
        version: str = "1",
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> RawWorker:
        w = RawWorker(self.channel, list(workflows), capacity, version=version, metadata=metadata)
        self.workers.append(w)
        return w

    async def trigger(self, workflow: str, input_json: str = "{}", **fields: Any) -> str:
        response = await self.client.Trigger(
            wf.TriggerRequest(
                workflow_name=workflow, input=types_pb2.Payload(json=input_json), **fields
            )
        )
        return str(response.run.run_id)

    async def get(self, run_id: str, wait: bool = False) -> Any:
        request = wf.GetRunRequest(run_id=run_id, wait=wait)
        if wait:
            request.wait_timeout.FromSeconds(5)
        return (await self.client.GetRun(request)).run

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of a read-only SQL query, straight from the database."""
        return await query(self.database, sql)

    async def close(self) -> None:
        for w in self.workers:
            await w.close()
        await self.channel.close(None)
        await self.running.stop(0)


async def start_harness(database: str, **settings: Any) -> Harness:
    config = ServerConfig(address="127.0.0.1:0", database=database, **settings)
    running = await create_server(config)
    return Harness(running, database)


@pytest.fixture
async def harness(database: str) -> AsyncIterator[Harness]:
    h = await start_harness(database)
    yield h
    await h.close()
