"""``Worker``: serves workflows over one ``PollTask`` stream (see docs/protocol.md).

A ``_Session`` is one stream: it sends the hello, runs each received run task
as an asyncio task (a ``RunExecutor``), batches every queued command into one
``WorkerCommandBatch`` per message, resolves command futures from the results,
cancels runs the server takes back, and heartbeats when idle. When the stream
ends, every run it held is abandoned (cancelled, nothing sent) and the worker
reconnects with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import random
import socket
import uuid
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
from stepd.v1 import worker_service_pb2, worker_service_pb2_grpc

from worker_sdk._definitions import Workflow
from worker_sdk._replay import RunAbandoned, RunExecutor, RunOutcome
from worker_sdk._rpc import CHANNEL_OPTIONS
from worker_sdk.errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from stepd.v1.worker_service_pb2_grpc import WorkerServiceAsyncStub

logger = logging.getLogger("stepd.worker")

HEARTBEAT_INTERVAL = 10.0
"""Seconds without any message after which the worker sends a heartbeat."""
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
_STABLE_SESSION = 1.0  # a stream that lived this long resets the backoff
_MAX_BATCH_BYTES = 3 * 1024 * 1024  # split larger batches across messages
_STOP_GRACE = 5.0  # seconds stop() waits for cancelled runs to unwind

_PollCall = grpc.aio.StreamStreamCall[
    worker_service_pb2.PollTaskRequest, worker_service_pb2.PollTaskResponse
]


def _sdk_version() -> str:
    try:
        return f"stepd-python/{importlib.metadata.version('stepd')}"
    except importlib.metadata.PackageNotFoundError:
        return "stepd-python/unknown"


SDK_VERSION = _sdk_version()


class Worker:
    """Executes runs of the given workflows, taken from a stepd server.

    ``concurrency`` is how many runs it executes at once (the capacity it
    declares). Use as ``async with Worker(address, workflows=[...]) as worker:
    await worker.run()``; ``run()`` serves until ``stop()`` is called or it is
    cancelled, reconnecting whenever the stream breaks.
    """

    def __init__(
        self,
        address: str,
        workflows: Iterable[Workflow[Any, Any]],
        *,
        concurrency: int = 100,
        identity: str | None = None,
    ) -> None:
        registry: dict[tuple[str, str], Workflow[Any, Any]] = {}
        for workflow in workflows:
            if not isinstance(workflow, Workflow):
                raise WorkflowDefinitionError(
                    f"{workflow!r} is not a workflow; decorate it with @workflow"
                )
            key = (workflow.name, workflow.version)
            known = registry.get(key)
            if known is not None and known is not workflow:
                raise WorkflowDefinitionError(
                    f"two workflows are named {workflow.name!r} version {workflow.version!r}"
                )
            registry[key] = workflow
        if not registry:
            raise WorkflowDefinitionError("a worker needs at least one workflow")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        self._address = address
        self._workflows = registry
        self._concurrency = concurrency
        self._identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self._worker_id = uuid.uuid4().hex
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._session_task: asyncio.Task[None] | None = None
        self._run_tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """The server address."""
        return self._address

    @property
    def workflows(self) -> tuple[Workflow[Any, Any], ...]:
        """The workflows served."""
        return tuple(self._workflows.values())

    @property
    def concurrency(self) -> int:
        """How many runs the worker executes at once."""
        return self._concurrency

    @property
    def identity(self) -> str:
        """The human-readable identity sent to the server (``host:pid`` by default)."""
        return self._identity

    @property
    def worker_id(self) -> str:
        """The unique id of this worker."""
        return self._worker_id

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_ready(self) -> None:
        """Wait until the first stream is open (the hello has been sent)."""
        await self._ready.wait()

    async def run(self) -> None:
        """Serve until ``stop()`` is called or the calling task is cancelled."""
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        self._stop.clear()
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        channel = grpc.aio.insecure_channel(self._address, options=CHANNEL_OPTIONS)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        failures = 0
        try:
            while not self._stop.is_set():
                started = loop.time()
                session = _Session(self, stub)
                self._session_task = asyncio.create_task(session.run())
                try:
                    await self._session_task
                    logger.info("the server closed the stream; reconnecting")
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if self._stop.is_set() and current is not None and not current.cancelling():
                        break
                    raise
                except grpc.aio.AioRpcError as exc:
                    if not self._stop.is_set():
                        code = exc.code()
                        logger.warning(
                            "stream to %s failed: %s %s",
                            self._address,
                            code.name if code is not None else "UNKNOWN",
                            exc.details(),
                        )
                except Exception:
                    logger.exception("stream to %s failed", self._address)
                finally:
                    self._session_task = None
                if self._stop.is_set():
                    break
                if session.connected and loop.time() - started >= _STABLE_SESSION:
                    failures = 0
                delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2**failures)
                delay = random.uniform(delay / 2, delay)
                failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self._running = False
            if self._run_tasks:  # cancelled with their session; let them unwind
                await asyncio.wait(set(self._run_tasks), timeout=_STOP_GRACE)
            await channel.close(None)
            self._stopped.set()

    async def stop(self) -> None:
        """Stop serving and wait until ``run()`` returns.

        The stream is closed at once and runs in progress are cancelled; the
        server re-queues them for another worker (steps already recorded are
        not run again).
        """
        self._stop.set()
        session = self._session_task
        if session is not None:
            session.cancel()
        if self._running:
            await self._stopped.wait()

    def _hello(self) -> worker_service_pb2.PollTaskRequest:
        request = worker_service_pb2.PollTaskRequest()
        hello = request.hello
        hello.worker_id = self._worker_id
        hello.identity = self._identity
        hello.capacity = self._concurrency
        hello.sdk_version = SDK_VERSION
        for name, version in self._workflows:
            hello.workflows.add(name=name, version=version)
        return request

    def __repr__(self) -> str:
        return f"Worker({self._address!r}, workflows={len(self._workflows)})"


class _HeldRun:
    """A run task the session holds, and the executor that runs it."""

    __slots__ = ("executor", "task")

    def __init__(self, executor: RunExecutor, task: asyncio.Task[None]) -> None:
        self.executor = executor
        self.task = task

    def abandon(self) -> None:
        self.executor.abandon()
        self.task.cancel()


class _Session:
    """One PollTask stream; the command channel of the runs it received."""

    def __init__(self, worker: Worker, stub: WorkerServiceAsyncStub) -> None:
        self._worker = worker
        self._stub = stub
        self._loop = asyncio.get_running_loop()
        self._call: _PollCall | None = None
        self._outbox: list[worker_service_pb2.WorkerCommand] = []
        self._pending: dict[int, asyncio.Future[worker_service_pb2.CommandResult]] = {}
        self._runs: dict[str, _HeldRun] = {}
        self._wake = asyncio.Event()
        self._next_id = 1
        self._last_write = self._loop.time()
        self._heartbeat_due = False
        self._closed = False
        self.connected = False

    async def run(self) -> None:
        """Open the stream and serve it until it ends; raise on a stream error."""
        call = self._call = self._stub.PollTask(None)
        tasks: set[asyncio.Task[None]] = set()
        try:
            await call.write(self._worker._hello())
            await call.wait_for_connection()
            self.connected = True
            self._last_write = self._loop.time()
            logger.info("worker %s connected to %s", self._worker.identity, self._worker.address)
            self._worker._ready.set()
            tasks = {
                asyncio.create_task(self._read_loop()),
                asyncio.create_task(self._write_loop()),
                asyncio.create_task(self._heartbeat_loop()),
            }
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a stream error propagates; a clean end returns
        finally:
            for task in tasks:
                task.cancel()
            self._close()
            if tasks:
                await asyncio.wait(tasks)

    # -- the command channel (used by RunExecutor) ---------------------------

    def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult]:
        """Queue a command for the next batch; the future resolves with its result."""
        if self._closed:
            raise RunAbandoned
        command_id = self._next_id
        self._next_id = command_id + 1
        command.command_id = command_id
        future = self._loop.create_future()
        self._pending[command_id] = future
        self._outbox.append(command)
        self._wake.set()
        return future

    # -- the stream ----------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._call is not None
        read = self._call.read
        pending = self._pending
        response_type = worker_service_pb2.PollTaskResponse
        while True:
            message = await read()
            if not isinstance(message, response_type):
                return  # EOF: the server ended the stream
            for result in message.results:
                future = pending.pop(result.command_id, None)
                if future is not None and not future.done():
                    future.set_result(result)
            for task in message.tasks:
                self._start(task)
            for cancellation in message.cancellations:
                self._cancel(cancellation)

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        except asyncio.InvalidStateError:  # the call ended; the reader reports how
            await self._loop.create_future()

    async def _write_batches(self) -> None:
        assert self._call is not None
        write = self._call.write
        wake = self._wake
        loop = self._loop
        while True:
            await wake.wait()
            wake.clear()
            if self._outbox:
                commands, self._outbox = self._outbox, []
                for batch in _batches(commands):
                    request = worker_service_pb2.PollTaskRequest()
                    request.commands.commands.extend(batch)
                    self._heartbeat_due = False
                    self._last_write = loop.time()
                    await write(request)
            elif self._heartbeat_due:
                request = worker_service_pb2.PollTaskRequest()
                request.heartbeat.send_time.GetCurrentTime()
                self._heartbeat_due = False
                self._last_write = loop.time()
                await write(request)

    async def _heartbeat_loop(self) -> None:
        loop = self._loop
        while True:
            delay = self._last_write + HEARTBEAT_INTERVAL - loop.time()
            if delay <= 0:
                self._heartbeat_due = True
                self._wake.set()
                delay = HEARTBEAT_INTERVAL
            await asyncio.sleep(delay)

    # -- runs ----------------------------------------------------------------

    def _start(self, task: worker_service_pb2.RunTask) -> None:
        workflow = self._worker._workflows.get((task.workflow_name, task.workflow_version))
        if workflow is None:
            logger.error(
                "run %s: workflow %r version %r is not served by this worker; releasing it",
                task.run_id,
                task.workflow_name,
                task.workflow_version,
            )
            command = worker_service_pb2.WorkerCommand(run_id=task.run_id, lease_id=task.lease_id)
            command.release_run.reason = "workflow version not served by this worker"
            self.submit(command)
            return
        previous = self._runs.pop(task.run_id, None)
        if previous is not None:  # a new lease on a run we still hold: the old one is void
            previous.abandon()
        executor = RunExecutor(workflow, task, self)
        run_task = self._loop.create_task(self._drive(executor))
        self._runs[task.run_id] = _HeldRun(executor, run_task)
        run_tasks = self._worker._run_tasks
        run_tasks.add(run_task)
        run_task.add_done_callback(run_tasks.discard)

    async def _drive(self, executor: RunExecutor) -> None:
        try:
            outcome = await executor.execute()
            if outcome is RunOutcome.NON_DETERMINISTIC:
                # Hold the run (neither failed nor completed) until the server takes
                # it back or the stream ends; a worker with matching code then gets it.
                await self._loop.create_future()
        except Exception:
            logger.exception("run %s: unexpected worker error", executor.run_id)
        finally:
            held = self._runs.get(executor.run_id)
            if held is not None and held.executor is executor:
                del self._runs[executor.run_id]

    def _cancel(self, cancellation: worker_service_pb2.RunCancellation) -> None:
        held = self._runs.get(cancellation.run_id)
        if held is None or held.executor.lease_id != cancellation.lease_id:
            return
        del self._runs[cancellation.run_id]
        held.abandon()
        logger.info(
            "run %s: stopped by the server: %s", cancellation.run_id, cancellation.reason or "-"
        )
        if self._outbox:  # send nothing more for it, not even what is queued
            kept = []
            for command in self._outbox:
                if command.run_id == cancellation.run_id:
                    future = self._pending.pop(command.command_id, None)
                    if future is not None:
                        future.cancel()
                else:
                    kept.append(command)
            self._outbox = kept

    def _close(self) -> None:
        """Abandon every held run (nothing more is sent) and drop the stream."""
        self._closed = True
        for held in self._runs.values():
            held.abandon()
        self._runs.clear()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._outbox.clear()
        if self._call is not None:
            self._call.cancel()


def _batches(
    commands: list[worker_service_pb2.WorkerCommand],
) -> Iterator[list[worker_service_pb2.WorkerCommand]]:
    """Split commands into batches of at most ~_MAX_BATCH_BYTES (a bigger one goes alone)."""
    batch: list[worker_service_pb2.WorkerCommand] = []
    size = 0
    for command in commands:
        command_size = command.ByteSize()
        if batch and size + command_size > _MAX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(command)
        size += command_size
    if batch:
        yield batch
