"""In-process fake stepd services on a real grpc.aio server (port 0), for SDK tests.

``FakeWorkerService`` records every stream and message (with its arrival
time) and lets a test push run tasks and cancellations; commands are answered
OK unless ``answer`` says otherwise, and ``settings``, when set, is sent as the
first response of every stream, like the real server's StreamSettings.
``FakeWorkflowService`` serves canned runs for Client tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from stepd.v1 import (
    types_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

Answer = Callable[[worker_service_pb2.WorkerCommand], worker_service_pb2.CommandResult | None]


class FakeStream:
    """One PollTask stream as the fake server saw it."""

    def __init__(self) -> None:
        self.requests: list[worker_service_pb2.PollTaskRequest] = []
        self.times: list[float] = []  # loop time at which each request arrived
        self.outbox: asyncio.Queue[worker_service_pb2.PollTaskResponse | None] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.half_closed = False  # the worker ended its side (after a graceful shutdown)

    @property
    def hello(self) -> worker_service_pb2.WorkerHello:
        return self.requests[0].hello

    def commands(self) -> list[worker_service_pb2.WorkerCommand]:
        return [c for r in self.requests if r.HasField("commands") for c in r.commands.commands]

    def command_messages(self) -> int:
        return sum(1 for r in self.requests if r.HasField("commands"))

    def heartbeats(self) -> int:
        return sum(1 for r in self.requests if r.HasField("heartbeat"))

    def times_of(self, kind: str) -> list[float]:
        """Arrival times of the requests of one kind (hello, commands, heartbeat, drain)."""
        return [
            t
            for r, t in zip(self.requests, self.times, strict=True)
            if r.WhichOneof("message") == kind
        ]

    def drains(self) -> list[worker_service_pb2.WorkerDrain]:
        return [r.drain for r in self.requests if r.HasField("drain")]

    def kinds(self, run_id: str) -> list[str]:
        """The kinds of the commands received for one run, in order."""
        return [str(c.WhichOneof("command")) for c in self.commands() if c.run_id == run_id]

    def push(self, **fields: Any) -> None:
        self.outbox.put_nowait(worker_service_pb2.PollTaskResponse(**fields))

    def close(self) -> None:
        """End the stream from the server side."""
        self.outbox.put_nowait(None)


class FakeWorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    """Accepts PollTask streams; answers commands OK (or per ``answer``)."""

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.stream_opened = asyncio.Condition()
        self.answer: Answer = lambda _: worker_service_pb2.CommandResult(
            status=worker_service_pb2.COMMAND_STATUS_OK
        )
        # Sent first on every stream, as the real server does once it registered
        # the worker (an empty one: the worker's defaults).
        self.settings = worker_service_pb2.StreamSettings()

    async def PollTask(
        self,
        request_iterator: AsyncIterator[worker_service_pb2.PollTaskRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[worker_service_pb2.PollTaskResponse]:
        stream = FakeStream()
        reader = asyncio.create_task(self._read(stream, request_iterator))
        try:
            yield worker_service_pb2.PollTaskResponse(settings=self.settings)
            while True:
                response = await stream.outbox.get()
                if response is None:
                    return
                yield response
        finally:
            reader.cancel()
            stream.ended.set()

    async def _read(
        self,
        stream: FakeStream,
        requests: AsyncIterator[worker_service_pb2.PollTaskRequest],
    ) -> None:
        first = True
        loop = asyncio.get_running_loop()
        async for request in requests:
            stream.requests.append(request)
            stream.times.append(loop.time())
            if first:
                first = False
                async with self.stream_opened:
                    self.streams.append(stream)
                    self.stream_opened.notify_all()
            if request.HasField("commands"):
                results = []
                for command in request.commands.commands:
                    result = self.answer(command)
                    if result is not None:
                        result.command_id = command.command_id
                        results.append(result)
                if results:
                    stream.push(results=results)
        stream.half_closed = True
        stream.close()  # like the real server: the worker's half-close ends the stream

    async def wait_streams(self, count: int, within: float = 5.0) -> FakeStream:
        """Wait until ``count`` streams have said hello; return the last one."""
        async with asyncio.timeout(within), self.stream_opened:
            await self.stream_opened.wait_for(lambda: len(self.streams) >= count)
        return self.streams[count - 1]


class FakeWorkflowService(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """Serves runs from a dict; records requests; ``errors`` maps a run id to a status."""

    def __init__(self) -> None:
        self.runs: dict[str, list[types_pb2.Run]] = {}  # GetRun answers, in order
        self.requests: list[Any] = []
        self.errors: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.pages: list[workflow_service_pb2.ListRunsResponse] = []
        self.event_pages: list[workflow_service_pb2.ListRunEventsResponse] = []
        self.published: set[str] = set()  # event ids seen by PublishEvent

    async def _maybe_fail(self, key: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if key in self.errors:
            code, details = self.errors[key]
            await context.abort(code, details)

    async def Trigger(
        self, request: workflow_service_pb2.TriggerRequest, context: Any
    ) -> workflow_service_pb2.TriggerResponse:
        self.requests.append(request)
        await self._maybe_fail(request.workflow_name, context)
        run_id = request.run_id or "run-1"
        return workflow_service_pb2.TriggerResponse(
            run=types_pb2.Run(run_id=run_id, status=types_pb2.RUN_STATUS_PENDING),
            already_existed=bool(request.idempotency_key),
        )

    async def GetRun(
        self, request: workflow_service_pb2.GetRunRequest, context: Any
    ) -> workflow_service_pb2.GetRunResponse:
        self.requests.append(request)
        await self._maybe_fail(request.run_id, context)
        answers = self.runs.get(request.run_id)
        if not answers:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id}")
            raise AssertionError("unreachable")
        run = answers.pop(0) if len(answers) > 1 else answers[0]
        return workflow_service_pb2.GetRunResponse(run=run)

    async def ListRuns(
        self, request: workflow_service_pb2.ListRunsRequest, context: Any
    ) -> workflow_service_pb2.ListRunsResponse:
        self.requests.append(request)
        index = int(request.page_token or "0")
        return self.pages[index]

    async def CancelRun(
        self, request: workflow_service_pb2.CancelRunRequest, context: Any
    ) -> workflow_service_pb2.CancelRunResponse:
        self.requests.append(request)
        await self._maybe_fail(request.run_id, context)
        return workflow_service_pb2.CancelRunResponse(
            run=types_pb2.Run(
                run_id=request.run_id,
                status=types_pb2.RUN_STATUS_CANCELLED,
                cancel_reason=request.reason,
            )
        )

    async def Signal(
        self, request: workflow_service_pb2.SignalRequest, context: Any
    ) -> workflow_service_pb2.SignalResponse:
        self.requests.append(request)
        await self._maybe_fail(request.run_id, context)
        return workflow_service_pb2.SignalResponse(run_id=request.run_id)

    async def PublishEvent(
        self, request: workflow_service_pb2.PublishEventRequest, context: Any
    ) -> workflow_service_pb2.PublishEventResponse:
        self.requests.append(request)
        await self._maybe_fail(request.name, context)
        already = request.event_id in self.published
        self.published.add(request.event_id)
        return workflow_service_pb2.PublishEventResponse(
            event_id=request.event_id or "assigned-1",
            already_published=already,
            woken_run_ids=[] if already else ["r1", "r2"],
        )

    async def ListRunEvents(
        self, request: workflow_service_pb2.ListRunEventsRequest, context: Any
    ) -> workflow_service_pb2.ListRunEventsResponse:
        self.requests.append(request)
        await self._maybe_fail(request.run_id, context)
        return self.event_pages[int(request.page_token or "0")]

    async def ExecuteHook(
        self, request: workflow_service_pb2.ExecuteHookRequest, context: Any
    ) -> workflow_service_pb2.ExecuteHookResponse:
        self.requests.append(request)
        await self._maybe_fail(request.token, context)
        return workflow_service_pb2.ExecuteHookResponse(run_id=f"run-of-{request.token}")

    async def GetServerInfo(
        self, request: workflow_service_pb2.GetServerInfoRequest, context: Any
    ) -> workflow_service_pb2.GetServerInfoResponse:
        return workflow_service_pb2.GetServerInfoResponse(server_version="fake")

    # Schedules are tested against the real server (tests/e2e/test_schedules.py).

    async def CreateSchedule(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def GetSchedule(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def ListSchedules(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def PauseSchedule(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def ResumeSchedule(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def DeleteSchedule(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def TriggerSchedule(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    # The live run stream is tested against the real server (tests/e2e/test_run_stream.py).

    async def WatchRun(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")
        yield None  # pragma: no cover - an async generator, as the stub expects

    async def RetryRun(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def ForkRun(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def DeleteRun(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def CancelRuns(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def RetryRuns(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def ListWorkers(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")

    async def ListFlowLimits(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not faked")


def settings(heartbeat: float, lease: float) -> worker_service_pb2.StreamSettings:
    """StreamSettings with the given heartbeat interval and lease timeout (seconds)."""
    result = worker_service_pb2.StreamSettings()
    result.heartbeat_interval.FromMilliseconds(round(heartbeat * 1000))
    result.lease_timeout.FromMilliseconds(round(lease * 1000))
    return result


async def start_server(*servicers: Any, port: int = 0) -> tuple[grpc.aio.Server, str]:
    """Start a grpc.aio server with the given fake servicers, on a free port by default."""
    server = grpc.aio.server()
    for servicer in servicers:
        if isinstance(servicer, worker_service_pb2_grpc.WorkerServiceServicer):
            worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
        else:
            workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"127.0.0.1:{port}"
