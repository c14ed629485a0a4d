"""The client's side of ``WorkflowService``: one channel, opened on first use, and the
calls on one run that ``Client`` and ``RunHandle`` share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import duration_pb2

from stepd._rpc import ConnectionSettings, call, sdk_error
from stepd._run_codec import run_info
from stepd._runs import RunInfo
from stepd.errors import ServerUnavailableError, StepdError
from stepd.history import RunEvent
from stepd.v1 import types_pb2, workflow_service_pb2, workflow_service_pb2_grpc

if TYPE_CHECKING:
    from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_WAIT_SLICE = 30.0  # seconds per GetRun(wait=True) call
_RPC_MARGIN = 10.0  # the RPC deadline beyond the server-side wait
_RETRY_MAX = 2.0
#: The header a waiting Trigger sends once its run is stored.
RUN_ID_HEADER = "stepd-run-id"
#: Codes of a call that broke on the way (the server may have stored the run).
_BROKEN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_TERMINAL = frozenset(
    {types_pb2.RUN_STATUS_COMPLETED, types_pb2.RUN_STATUS_FAILED, types_pb2.RUN_STATUS_CANCELLED}
)


class WorkflowCalls:
    """A channel to the server's ``WorkflowService`` and the calls on one run."""

    __slots__ = ("_channel", "_closed", "_stub", "settings")

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        """How the channel reaches the server."""
        self._channel: grpc.aio.Channel | None = None
        self._stub: WorkflowServiceAsyncStub | None = None
        self._closed = False

    def stub(self) -> WorkflowServiceAsyncStub:
        """The service's stub (the channel opens on first use); StepdError once closed."""
        stub = self._stub
        if stub is None:
            if self._closed:
                raise StepdError("the client is closed")
            self._channel = self.settings.open_channel()
            stub = self._stub = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        return stub

    async def call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        rpc_timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Resp:
        """Make one unary call with the settings' metadata (the API key) and
        ``metadata``; a gRPC error is raised as the SDK's error."""
        return await call(
            method, request, rpc_timeout=rpc_timeout, metadata=self.settings.metadata + metadata
        )

    async def close(self) -> None:
        """Close the channel; no call can be made afterwards."""
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    async def get_run(self, run_id: str) -> RunInfo:
        """Fetch a run; raises NotFoundError for an unknown id."""
        return run_info(await self._get_run(run_id))

    async def wait_for_end(self, run_id: str, timeout: float | None) -> types_pb2.Run:  # noqa: ASYNC109
        """Wait until the run is completed, failed or cancelled and return it; raise
        TimeoutError after ``timeout`` seconds. Waiting happens on the server
        (``GetRun`` with ``wait``); while the server is unreachable the call is
        retried."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.1
        while True:
            wait = _WAIT_SLICE
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError(f"run {run_id} did not finish within {timeout} s")
            try:
                run = await self._get_run(run_id, wait=wait)
            except StepdError as exc:
                if not isinstance(exc, ServerUnavailableError) and exc.code != "DEADLINE_EXCEEDED":
                    raise  # only an unreachable or slow server is worth waiting out
                await asyncio.sleep(pause if deadline is None else min(pause, wait))
                pause = min(pause * 2, _RETRY_MAX)
                continue
            pause = 0.1
            if run.status in _TERMINAL:
                return run

    async def trigger_and_wait(
        self,
        request: workflow_service_pb2.TriggerRequest,
        timeout: float | None,  # noqa: ASYNC109
        metadata: tuple[tuple[str, str], ...],
    ) -> types_pb2.Run:
        """``Trigger`` with ``wait``: the finished run; TimeoutError after ``timeout``
        seconds. Past the server's cap on one wait, or when the call breaks after the
        server said the run is stored (its ``stepd-run-id`` header), this waits on as
        ``wait_for_end`` does. A call that breaks before raises, as ``Trigger`` does."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        wait = _WAIT_SLICE if timeout is None else min(_WAIT_SLICE, timeout)
        request.wait = True
        request.wait_timeout.CopyFrom(_duration(wait))
        call = self.stub().Trigger(
            request, timeout=wait + _RPC_MARGIN, metadata=self.settings.metadata + metadata
        )
        stored: str | None = None
        run: types_pb2.Run | None = None
        try:
            stored = _header(await call.initial_metadata(), RUN_ID_HEADER)
            run = (await call).run
        except grpc.aio.AioRpcError as exc:
            if stored is None or exc.code() not in _BROKEN:
                raise sdk_error(exc) from exc
        if run is not None and run.status in _TERMINAL:
            return run
        run_id = run.run_id if run is not None else stored
        assert run_id is not None  # one of the two is set here
        remaining = None if timeout is None else timeout - (loop.time() - started)
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"run {run_id} did not finish within {timeout} s")
        return await self.wait_for_end(run_id, remaining)

    async def cancel(self, run_id: str, reason: str) -> RunInfo:
        """Cancel a run; return it (now cancelled)."""
        request = workflow_service_pb2.CancelRunRequest(run_id=run_id, reason=reason)
        response = await self.call(self.stub().CancelRun, request)
        return run_info(response.run)

    async def signal(self, run_id: str, name: str, payload_json: str, request_id: str) -> None:
        """Send a run a signal (stored when this returns)."""
        request = workflow_service_pb2.SignalRequest(
            run_id=run_id,
            name=name,
            payload=types_pb2.Payload(json=payload_json),
            request_id=request_id,
        )
        await self.call(self.stub().Signal, request)

    async def events(self, run_id: str, page_size: int) -> AsyncIterator[RunEvent]:
        """Iterate over a run's history, oldest first, following the server's pages."""
        request = workflow_service_pb2.ListRunEventsRequest(run_id=run_id, page_size=page_size)
        while True:
            response = await self.call(self.stub().ListRunEvents, request)
            for event in response.events:
                yield RunEvent.from_proto(event)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def watch(self, run_id: str) -> AsyncIterator[RunEvent]:
        """A run's history, then each entry as it is committed, until the run ends
        (``WatchRun``, resumed where it stopped when the server ends the stream)."""
        request = workflow_service_pb2.WatchRunRequest(run_id=run_id)
        while True:
            stream = self.stub().WatchRun(request, metadata=self.settings.metadata)
            ended = False
            try:
                async for response in stream:
                    for event in response.events:
                        yield RunEvent.from_proto(event)
                    request.page_token = response.resume_token
                    if response.HasField("run"):
                        ended = response.run.status in _TERMINAL
            except grpc.aio.AioRpcError as exc:
                raise sdk_error(exc) from None
            finally:
                stream.cancel()
            if ended:
                return

    async def _get_run(self, run_id: str, *, wait: float | None = None) -> types_pb2.Run:
        request = workflow_service_pb2.GetRunRequest(run_id=run_id)
        rpc_timeout = None
        if wait is not None:
            request.wait = True
            request.wait_timeout.CopyFrom(_duration(wait))
            rpc_timeout = wait + _RPC_MARGIN
        response = await self.call(self.stub().GetRun, request, rpc_timeout=rpc_timeout)
        return response.run


def _header(metadata: Any, name: str) -> str | None:
    """The value of header ``name`` in a call's initial metadata (None: absent)."""
    for key, value in metadata or ():
        if key == name and isinstance(value, str):
            return value
    return None


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(max(1_000_000, int(seconds * 1e9)))
    return duration
