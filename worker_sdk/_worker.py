"""``Worker``: serves workflows over one ``PollTask`` stream (see docs/protocol.md).

A ``_Session`` is one stream: it sends the hello, runs each received run task
as an asyncio task (a ``RunExecutor``), batches every queued command into one
``WorkerCommandBatch`` per message, resolves command futures from the results,
cancels runs the server takes back, and sends a heartbeat whenever nothing
else was sent for the ``heartbeat_interval`` the server announced in its
``StreamSettings``. A run the server suspends is kept live in a bounded cache
(``max_cached_runs``, ``_run_cache.py``) so that a continuation resumes it
without a replay. When the stream ends, every run it held or kept is abandoned
(cancelled, nothing sent) and the worker reconnects with jittered exponential
backoff.

``Worker.stop()`` shuts down gracefully: the session sends ``drain`` (no more
tasks), every held run finishes the step bodies it has in flight and is
released (``release_run``) at its next new step, runs still busy when the
grace period ends are cancelled and released, and then the stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.metadata
import logging
import os
import random
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
from google.protobuf import duration_pb2
from pydantic import ValidationError

from stepd import _runtime
from stepd._client import Client
from stepd._control import RunAbandoned
from stepd._definitions import Workflow
from stepd._early_runs import EarlyRuns
from stepd._json_logs import run_fields
from stepd._phase import RunOutcome
from stepd._replay import RELEASE_REASON, RunExecutor
from stepd._rpc import ConnectionSettings, sdk_error
from stepd._run_cache import RunCache
from stepd._serde import dumps
from stepd._task_parts import TaskParts
from stepd.errors import PayloadError, WorkflowDefinitionError
from stepd.v1 import worker_service_pb2, worker_service_pb2_grpc

if TYPE_CHECKING:
    from stepd.v1.worker_service_pb2_grpc import WorkerServiceAsyncStub

logger = logging.getLogger("stepd.worker")

HEARTBEAT_INTERVAL = 10.0
"""Seconds without any message after which the worker sends a heartbeat, when the
server's StreamSettings do not say."""
SHUTDOWN_GRACE = 30.0
"""Default seconds ``stop()`` lets runs finish their step bodies in flight."""
MAX_CACHED_RUNS = 256
"""Default number of suspended runs a worker keeps live to continue without replay."""
CONTINUATION_MISSED = "continuation of a run not kept live here; send the full journal"
"""The ``release_run`` reason of a continuation the worker cannot continue."""
EARLY_CAPACITY = 1000
"""How many runs handed out before a sleep's time (met early) the worker waits out
beside its ``concurrency`` (``WorkerHello.early_capacity``, ``_early_runs.py``). Each
is a coroutine parked at its sleep, so a burst of sleeps ending together does not
fill the slots with runs that only wait."""
# The server's limits on a hello (docs/operations.md#limits).
MAX_CONCURRENCY = 10_000
MAX_CACHED_RUNS_LIMIT = 100_000
MAX_WORKFLOWS = 1000
MAX_VERSIONS = 100
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
_STABLE_SESSION = 1.0  # a stream that lived this long resets the backoff
_MAX_BATCH_BYTES = 3 * 1024 * 1024  # split larger batches across messages
_MAX_BATCH_COMMANDS = 1000  # the server's limit of commands in one batch
# Without the server's own limit of a stream message (StreamSettings), gRPC's:
# a command larger is not sent (its run fails instead: see _Session._fit).
_MAX_COMMAND_BYTES = 64 * 1024 * 1024 - 1024
_FRAMING = 1024  # room for the batch's own bytes around a command
PAYLOAD_TOO_LARGE = "stepd.PayloadTooLarge"
"""The error type of a run failed because a command of it was too large to send."""
_STOP_GRACE = 5.0  # seconds run() waits for cancelled runs to unwind
_CLOSE_TIMEOUT = 2.0  # seconds a shutdown waits for the last acks, then for the stream end
_POLL = 0.01  # seconds between checks while shutting down
_MIN_HEARTBEAT = 0.01

# The channel reconnects on the same schedule as the worker (grpc's default
# backoff grows to 120 s, which would outlast a server restart by minutes).
_WORKER_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", int(BACKOFF_INITIAL * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX * 1000)),
]

# The server refused the worker's key: the stream ends and run() raises.
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

_PollCall = grpc.aio.StreamStreamCall[
    worker_service_pb2.PollTaskRequest, worker_service_pb2.PollTaskResponse
]


def _sdk_version() -> str:
    try:
        return f"stepd-python/{importlib.metadata.version('stepd')}"
    except importlib.metadata.PackageNotFoundError:
        return "stepd-python/unknown"


SDK_VERSION = _sdk_version()


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _registration(workflow: Workflow[Any, Any]) -> worker_service_pb2.WorkflowRegistration:
    """What the hello says about one workflow: name, version, event triggers, schedule,
    execution timeout and journal limit."""
    registration = worker_service_pb2.WorkflowRegistration(
        name=workflow.name,
        version=workflow.version,
        event_triggers=workflow.events,
        max_entries=workflow.max_entries or 0,
    )
    if workflow.concurrency is not None:
        registration.concurrency.CopyFrom(workflow.concurrency.to_proto(workflow.name))
    registration.priority = workflow.priority
    if workflow.start_rate is not None:
        registration.start_rate.CopyFrom(workflow.start_rate.to_proto(workflow.name))
    if workflow.debounce is not None:
        registration.debounce.CopyFrom(workflow.debounce.to_proto())
    if workflow.execution_timeout is not None:
        registration.execution_timeout.FromNanoseconds(int(workflow.execution_timeout * 1e9))
    schedule = workflow.schedule
    if schedule is not None:
        try:
            value = workflow.input_adapter.validate_python(schedule.input)
            input_json = dumps(value, workflow.input_adapter)
        except (ValidationError, PayloadError) as exc:
            raise WorkflowDefinitionError(
                f"workflow {workflow.name!r}: the schedule's input does not fit the "
                f"workflow's input type: {exc}"
            ) from None
        registration.schedule.CopyFrom(schedule.to_proto(input_json))
    return registration


def _check_grace(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class Worker:
    """Executes runs of the given workflows, taken from a stepd server.

    ``server`` is the server's address (``host:port``) or a ``Client``: the worker
    then connects with the client's connection settings (``client.connection``), the
    one place they are set. The client only lends its settings; the worker opens a
    channel of its own and may outlive the client.

    ``concurrency`` is how many runs it executes at once (the capacity it
    declares). Use as ``async with Worker(client, workflows=[...]) as worker:
    await worker.run()``; ``run()`` serves until ``stop()`` is called or it is
    cancelled, reconnecting whenever the stream breaks. Given a ``Client``, the
    worker uses its TLS settings and API key too (a worker key naming its
    workflows); ``run()`` raises ``UnauthenticatedError`` or
    ``PermissionDeniedError`` when the server refuses the key.

    ``shutdown_grace`` is how many seconds ``stop()`` lets the runs it holds
    finish the step bodies they are executing (see ``stop()``).

    ``max_cached_runs`` is how many suspended runs (sleeping, waiting for a
    signal, event, hook or child) the worker keeps live in memory, parked at
    their wait, least recently suspended evicted first. When such a run wakes,
    the server sends it back here with only the new journal entries and it
    continues without replaying its journal, so a long loop of steps and
    sleeps costs linear, not quadratic, time. ``0`` turns the cache off: every
    wake-up replays the run from the top. Correctness never depends on it.

    The worker keeps its leases alive with heartbeats sent from an asyncio task,
    so the event loop must not be blocked for long: ``async def`` steps must
    await rather than block, and plain (sync) step functions run in a thread
    (``asyncio.to_thread``) precisely so that they do not stall the loop. A
    loop blocked for longer than the server's lease timeout loses the stream
    and every run the worker holds.
    """

    def __init__(
        self,
        server: str | Client,
        workflows: Iterable[Workflow[Any, Any]],
        *,
        concurrency: int = 100,
        identity: str | None = None,
        shutdown_grace: float = SHUTDOWN_GRACE,
        max_cached_runs: int = MAX_CACHED_RUNS,
    ) -> None:
        if isinstance(server, Client):
            connection = server.connection
        elif isinstance(server, str):
            if not server:
                raise ValueError("a worker needs a server address, got an empty string")
            connection = ConnectionSettings(server)
        else:
            raise TypeError(f"a worker needs a server address or a Client, got {server!r}")
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
        if len(registry) > MAX_WORKFLOWS:
            raise WorkflowDefinitionError(
                f"a worker serves at most {MAX_WORKFLOWS} workflow versions; got {len(registry)}"
            )
        versions = Counter(name for name, _ in registry)
        crowded = [name for name, count in versions.items() if count > MAX_VERSIONS]
        if crowded:
            raise WorkflowDefinitionError(
                f"a worker serves at most {MAX_VERSIONS} versions of one workflow; "
                f"{crowded[0]!r} has {versions[crowded[0]]}"
            )
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise ValueError(
                f"concurrency must be an int from 1 to {MAX_CONCURRENCY}, got {concurrency!r}"
            )
        if (
            isinstance(max_cached_runs, bool)
            or not isinstance(max_cached_runs, int)
            or not 0 <= max_cached_runs <= MAX_CACHED_RUNS_LIMIT
        ):
            raise ValueError(
                f"max_cached_runs must be an int from 0 to {MAX_CACHED_RUNS_LIMIT}, "
                f"got {max_cached_runs!r}"
            )
        self._max_cached_runs = max_cached_runs
        self._shutdown_grace = _check_grace(shutdown_grace, "shutdown_grace")
        self._connection = connection
        self._workflows = registry
        self._concurrency = concurrency
        self._identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self._worker_id = uuid.uuid4().hex
        self._stopped = asyncio.Event()
        self._running = False
        self._session: _Session | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._stop = _Stop()
        self._serving = _Serving(
            identity=self._identity,
            address=connection.address,
            hello=self._hello([_registration(w) for w in registry.values()]),
            workflows=registry,
            max_cached_runs=max_cached_runs,
            ready=asyncio.Event(),
            stop=self._stop,
            run_tasks=set(),
            runtime=_runtime.current(),
        )

    @property
    def address(self) -> str:
        """The server address."""
        return self._connection.address

    @property
    def workflows(self) -> tuple[Workflow[Any, Any], ...]:
        """The workflows served."""
        return tuple(self._workflows.values())

    @property
    def concurrency(self) -> int:
        """How many runs the worker executes at once."""
        return self._concurrency

    @property
    def max_cached_runs(self) -> int:
        """How many suspended runs the worker keeps live (0: none)."""
        return self._max_cached_runs

    @property
    def shutdown_grace(self) -> float:
        """Seconds ``stop()`` lets runs finish the step bodies they are executing."""
        return self._shutdown_grace

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
        """Wait until the server has registered the first stream (its first answer
        arrived): from then on the server lists this worker and may hand it runs."""
        await self._serving.ready.wait()

    async def run(self) -> None:
        """Serve until ``stop()`` is called or the calling task is cancelled.

        Cancelling the task that runs it stops at once, without the graceful
        drain: the runs held are abandoned and the server re-queues them.
        """
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        channel = self._connection.open_channel(_WORKER_CHANNEL_OPTIONS)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        failures = 0
        try:
            while not self._stop.event.is_set():
                started = loop.time()
                session = self._session = _Session(self._serving, stub, self._connection.metadata)
                self._session_task = asyncio.create_task(session.run())
                try:
                    await self._session_task
                    if not self._stop.event.is_set():
                        logger.info("the server closed the stream; reconnecting")
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if (
                        self._stop.event.is_set()
                        and current is not None
                        and not current.cancelling()
                    ):
                        break
                    raise
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in _REFUSED:  # a bad or revoked key: retrying cannot help
                        raise sdk_error(exc) from exc
                    if not self._stop.event.is_set():
                        code = exc.code()
                        logger.warning(
                            "stream to %s failed: %s %s",
                            self.address,
                            code.name if code is not None else "UNKNOWN",
                            exc.details(),
                        )
                except Exception:
                    logger.exception("stream to %s failed", self.address)
                finally:
                    self._session_task = None
                    self._session = None
                if self._stop.event.is_set():
                    break
                if session.connected and loop.time() - started >= _STABLE_SESSION:
                    failures = 0
                delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2**failures)
                delay = random.uniform(delay / 2, delay)
                failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.event.wait(), delay)
        finally:
            self._running = False
            run_tasks = self._serving.run_tasks
            if run_tasks:  # cancelled with their session; let them unwind
                await asyncio.wait(set(run_tasks), timeout=_STOP_GRACE)
            await channel.close(None)
            self._stop.reset()
            self._stopped.set()

    async def stop(self, grace: float | None = None, *, reason: str = "worker stopping") -> None:
        """Stop serving gracefully and wait until ``run()`` returns.

        The worker tells the server at once to send it no more tasks (``drain``).
        Each run it holds may finish the step bodies it is executing, and their
        outcomes are recorded; a run that then calls a new step does not start
        it but is released (given back to the queue unchanged) so that another
        worker continues it at once, and a run that finishes is completed as
        usual. Runs still busy after ``grace`` seconds (default: the worker's
        ``shutdown_grace``) have their steps cancelled and are released too;
        then the stream is closed. ``reason`` goes to the server's log.

        Calling ``stop()`` again with a shorter ``grace`` (e.g. ``0`` on a second
        SIGTERM) shortens the wait. Called before ``run()``, it makes that
        ``run()`` return at once. A step body running in a thread (a sync step)
        cannot be interrupted: it is abandoned and its result is dropped.
        """
        grace = self._shutdown_grace if grace is None else _check_grace(grace, "grace")
        self._stop.request(asyncio.get_running_loop().time() + grace, reason)
        session, task = self._session, self._session_task
        if task is not None and (session is None or not session.connected):
            task.cancel()  # still connecting: nothing is held, nothing to drain
        if self._running:
            await self._stopped.wait()

    def _hello(
        self, registrations: list[worker_service_pb2.WorkflowRegistration]
    ) -> worker_service_pb2.PollTaskRequest:
        request = worker_service_pb2.PollTaskRequest()
        hello = request.hello
        hello.worker_id = self._worker_id
        hello.identity = self._identity
        hello.capacity = self._concurrency
        hello.sdk_version = SDK_VERSION
        hello.max_cached_runs = self._max_cached_runs
        hello.early_capacity = EARLY_CAPACITY
        hello.workflows.extend(registrations)
        return request

    def __repr__(self) -> str:
        return f"Worker({self.address!r}, workflows={len(self._workflows)})"


class _Stop:
    """A worker's request to stop, as its sessions see it: once requested it stays so
    until ``run()`` returns; a later ``stop()`` may only move the deadline earlier."""

    __slots__ = ("deadline", "event", "reason")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        """Set when the worker is asked to stop."""
        self.reason = ""
        """The first ``stop()``'s reason."""
        self.deadline: float | None = None
        """Loop time when the shutdown grace ends."""

    def request(self, deadline: float, reason: str) -> None:
        """Ask to stop by ``deadline`` (the earliest asked for wins)."""
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def reset(self) -> None:
        """Forget the request (``run()`` returned)."""
        self.event.clear()
        self.deadline = None


@dataclass(frozen=True, slots=True)
class _Serving:
    """What a worker hands each of its sessions (one per stream)."""

    identity: str
    address: str
    hello: worker_service_pb2.PollTaskRequest
    workflows: Mapping[tuple[str, str], Workflow[Any, Any]]
    max_cached_runs: int
    ready: asyncio.Event  # set once the server registered the first stream
    stop: _Stop
    run_tasks: set[asyncio.Task[None]]  # every run's task: run() lets them unwind
    runtime: _runtime.Runtime  # the runs' clock and bodies (stepd.testing gives its own)


class _HeldRun:
    """A run task the session holds, and the executor that runs it."""

    __slots__ = ("executor", "task")

    def __init__(self, executor: RunExecutor, task: asyncio.Task[None]) -> None:
        self.executor = executor
        self.task = task

    def abandon(self) -> None:
        self.executor.abandon()
        self.task.cancel()


class _Wait(enum.Enum):
    DONE = "done"  # the condition holds
    TIMEOUT = "timeout"
    STREAM_ENDED = "stream_ended"


class _Session:
    """One PollTask stream; the command channel of the runs it received."""

    def __init__(
        self,
        serving: _Serving,
        stub: WorkerServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._serving = serving
        self._stub = stub
        self._metadata = metadata
        self._loop = asyncio.get_running_loop()
        self._call: _PollCall | None = None
        self._outbox: list[worker_service_pb2.WorkerCommand] = []
        self._pending: dict[int, asyncio.Future[worker_service_pb2.CommandResult]] = {}
        self._runs: dict[str, _HeldRun] = {}
        # Of those, the runs that wait out a sleep met early, and their turns.
        self._early = EarlyRuns(serving.hello.hello.capacity, self._runs.__len__)
        self._cache: RunCache[_HeldRun] = RunCache(serving.max_cached_runs)  # parked runs
        self._wake = asyncio.Event()
        self._next_id = 1
        self._last_write = self._loop.time()
        self._heartbeat_interval = HEARTBEAT_INTERVAL
        self._max_command_bytes = _MAX_COMMAND_BYTES
        self._heartbeat_due = False
        self._retime = asyncio.Event()  # the heartbeat interval changed
        self._draining = False
        self._drain_due: str | None = None  # the reason of a drain message to send
        self._half_close = False  # end our side of the stream once the outbox is sent
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = False
        self._ordered_commands = False  # until the server's StreamSettings say so
        self.lease_timeout: float | None = None
        """The server's lease timeout in seconds, once its StreamSettings arrived."""

    @property
    def heartbeat_interval(self) -> float:
        """Seconds of silence after which a heartbeat is sent."""
        return self._heartbeat_interval

    async def run(self) -> None:
        """Open the stream and serve it until it ends; raise on a stream error.

        When the worker is asked to stop, shut the stream down gracefully.
        """
        call = self._call = self._stub.PollTask(None, metadata=self._metadata)
        tasks = self._stream_tasks
        stopping: asyncio.Task[Any] | None = None
        try:
            await call.write(self._serving.hello)
            await call.wait_for_connection()
            self.connected = True
            self._last_write = self._loop.time()
            serving = self._serving
            logger.info("worker %s connected to %s", serving.identity, serving.address)
            self._reader = asyncio.create_task(self._read_loop())
            tasks.update(
                (
                    self._reader,
                    asyncio.create_task(self._write_loop()),
                    asyncio.create_task(self._heartbeat_loop()),
                )
            )
            stopping = asyncio.create_task(serving.stop.event.wait())
            done, _ = await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
            ended = done & tasks
            for task in ended:
                task.result()  # a stream error propagates; a clean end returns
            if not ended:
                await self._shut_down()
        finally:
            everything: set[asyncio.Task[Any]] = set(tasks)
            if stopping is not None:
                everything.add(stopping)
            for task in everything:
                task.cancel()
            self._close()
            if everything:
                await asyncio.wait(everything)
                for task in tasks:  # mark errors seen: the first one was raised above
                    if not task.cancelled():
                        task.exception()

    # -- graceful shutdown ---------------------------------------------------

    async def _shut_down(self) -> None:
        """Drain, let held runs finish their steps in flight (or release them at
        the grace deadline), wait for the last acks, then end the stream."""
        serving = self._serving
        stop = serving.stop
        reason = stop.reason or "worker stopping"
        logger.info(
            "worker %s draining (%s): %d run(s) held", serving.identity, reason, len(self._runs)
        )
        self._draining = True
        self._drain_due = reason
        self._wake.set()
        self._evict_all()  # the server forgets them too when it sees the drain
        for held in list(self._runs.values()):
            held.executor.drain()
        state = await self._wait_until(lambda: not self._runs, lambda: stop.deadline)
        if state is _Wait.STREAM_ENDED:
            return
        if state is _Wait.TIMEOUT:
            logger.warning(
                "worker %s: %d run(s) still busy at the end of the shutdown grace; "
                "cancelling their steps and releasing them",
                serving.identity,
                len(self._runs),
            )
            for held in list(self._runs.values()):
                held.executor.release()  # a run whose final command is out keeps waiting
        close_by = self._loop.time() + _CLOSE_TIMEOUT
        state = await self._wait_until(
            lambda: not self._runs and not self._pending and not self._outbox, lambda: close_by
        )
        if state is _Wait.STREAM_ENDED:
            return
        self._half_close = True  # the writer ends our side; the server then ends the stream
        self._wake.set()
        assert self._reader is not None
        await asyncio.wait({self._reader}, timeout=_CLOSE_TIMEOUT)

    async def _wait_until(
        self, condition: Callable[[], bool], deadline: Callable[[], float | None]
    ) -> _Wait:
        """Poll ``condition`` until it holds, the stream ends, or ``deadline()`` passes
        (read on each poll: a second stop() may move it)."""
        loop = self._loop
        while True:
            if condition():
                return _Wait.DONE
            if any(task.done() for task in self._stream_tasks):
                return _Wait.STREAM_ENDED
            end = deadline()
            if end is not None and loop.time() >= end:
                return _Wait.TIMEOUT
            await asyncio.sleep(_POLL)

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

    async def wait_for_room(self, run_id: str) -> None:
        """Return once ``run_id``, which waited out a sleep met early, may go on."""
        await self._early.go_on(run_id)

    @property
    def ordered_commands(self) -> bool:
        """True when the server said it applies each run's commands in the order sent."""
        return self._ordered_commands

    # -- the stream ----------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._call is not None
        read = self._call.read
        pending = self._pending
        response_type = worker_service_pb2.PollTaskResponse
        parts = TaskParts()  # a task too large for one message comes in parts
        message = await read()
        if isinstance(message, response_type) and message.HasField("settings"):
            self._apply_settings(message.settings)  # sent in the first response
        if isinstance(message, response_type):
            # The server answers once it has registered the stream: from now on
            # it lists this worker and may hand it runs.
            self._serving.ready.set()
        while isinstance(message, response_type):  # anything else is EOF: the stream ended
            for result in message.results:
                future = pending.pop(result.command_id, None)
                if future is not None and not future.done():
                    future.set_result(result)
            if message.results and message.tasks:
                # Let the results' callbacks run first: a continuation may follow
                # the answer to the suspend_run that parked its run.
                await asyncio.sleep(0)
            for part in message.tasks:
                task = parts.add(part)
                if task is not None:
                    self._start(task)
            for cancellation in message.cancellations:
                self._cancel(cancellation)
            message = await read()

    def _apply_settings(self, settings: worker_service_pb2.StreamSettings) -> None:
        interval = _seconds(settings.heartbeat_interval)
        if interval <= 0:
            interval = HEARTBEAT_INTERVAL
        lease = _seconds(settings.lease_timeout)
        if lease > 0:
            self.lease_timeout = lease
            if interval >= lease:  # a heartbeat that late would always lose the lease
                interval = lease / 3
        self._heartbeat_interval = max(interval, _MIN_HEARTBEAT)
        if settings.max_message_bytes:
            self._max_command_bytes = max(settings.max_message_bytes - _FRAMING, _FRAMING)
        self._ordered_commands = settings.ordered_commands
        self._retime.set()
        logger.debug(
            "stream settings: heartbeat every %.3g s, lease timeout %s s",
            self._heartbeat_interval,
            f"{lease:.3g}" if lease > 0 else "-",
        )

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        except asyncio.InvalidStateError:  # the call ended; the reader reports how
            await self._loop.create_future()

    async def _write_batches(self) -> None:
        assert self._call is not None
        call = self._call
        write = call.write
        wake = self._wake
        loop = self._loop
        while True:
            await wake.wait()
            wake.clear()
            if self._drain_due is not None:
                request = worker_service_pb2.PollTaskRequest()
                request.drain.reason = self._drain_due
                self._drain_due = None
                self._heartbeat_due = False
                self._last_write = loop.time()
                await write(request)
            if self._outbox:
                commands, self._outbox = self._fit(self._outbox), []
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
            if self._half_close and not self._outbox:
                await call.done_writing()
                return

    def _fit(
        self, commands: list[worker_service_pb2.WorkerCommand]
    ) -> list[worker_service_pb2.WorkerCommand]:
        """The commands to send: one too large for a stream message (a payload far
        past the server's limit) is answered INVALID here, and its run failed with
        ``stepd.PayloadTooLarge`` instead (a dropped custom entry fails nothing)."""
        limit = self._max_command_bytes
        if all(command.ByteSize() <= limit for command in commands):
            return commands
        fitted = []
        for command in commands:
            size = command.ByteSize()
            if size <= limit:
                fitted.append(command)
                continue
            kind = command.WhichOneof("command") or "command"
            message = (
                f"{kind} is {size} bytes, too large for a stream message "
                f"(at most {limit}); the server accepts payloads far smaller"
            )
            logger.error("run %s: %s", command.run_id, message)
            future = self._pending.pop(command.command_id, None)
            if future is not None and not future.done():
                future.set_result(
                    worker_service_pb2.CommandResult(
                        command_id=command.command_id,
                        status=worker_service_pb2.COMMAND_STATUS_INVALID,
                        message=message,
                    )
                )
            if kind != "record_event":
                failure = worker_service_pb2.WorkerCommand(
                    command_id=self._next_id, run_id=command.run_id, lease_id=command.lease_id
                )
                self._next_id += 1
                failure.fail_run.error.type = PAYLOAD_TOO_LARGE
                failure.fail_run.error.message = message
                fitted.append(failure)
        return fitted

    async def _heartbeat_loop(self) -> None:
        """Flag a heartbeat whenever nothing was written for a heartbeat interval.

        Any message written counts (the writer stamps ``_last_write``), so while
        commands flow no heartbeat is sent; each check is O(1).
        """
        loop = self._loop
        retime = self._retime
        while True:
            interval = self._heartbeat_interval
            delay = self._last_write + interval - loop.time()
            if delay <= 0:
                self._heartbeat_due = True
                self._wake.set()
                delay = interval
            retime.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await retime.wait()

    # -- runs ----------------------------------------------------------------

    def _start(self, task: worker_service_pb2.RunTask) -> None:
        if self._draining:  # sent before the server saw our drain: give it straight back
            self._release_unstarted(task, RELEASE_REASON)
            return
        workflow = self._serving.workflows.get((task.workflow_name, task.workflow_version))
        if workflow is None:
            logger.error(
                "run %s: workflow %r version %r is not served by this worker; releasing it",
                task.run_id,
                task.workflow_name,
                task.workflow_version,
                extra=run_fields(task.run_id, task.workflow_name, task.lease_id),
            )
            self._release_unstarted(task, "workflow version not served by this worker")
            return
        if task.continues_lease:
            self._continue(task)
            return
        previous = self._runs.pop(task.run_id, None)
        if previous is not None:  # a new lease on a run we still hold: the old one is void
            previous.abandon()
            self._early.left(task.run_id)
        cached = self._cache.pop(task.run_id)
        if cached is not None:  # handed out afresh: the parked execution is void
            cached.executor.evict()
        on_park = self._park if self._cache.size else None
        executor = RunExecutor(workflow, task, self, on_park, self._serving.runtime)
        run_task = self._loop.create_task(self._drive(executor))
        self._runs[task.run_id] = _HeldRun(executor, run_task)
        if executor.waits_out_early:
            self._early.arrived(task.run_id)
        run_tasks = self._serving.run_tasks
        run_tasks.add(run_task)
        run_task.add_done_callback(run_tasks.discard)

    def _continue(self, task: worker_service_pb2.RunTask) -> None:
        """Resume a parked run from a continuation; without one that matches its lease,
        release the run so that the server hands it out again with the full journal."""
        cached = self._cache.pop(task.run_id)
        if cached is not None and cached.executor.resume(task):
            self._runs[task.run_id] = cached
            if cached.executor.waits_out_early:
                self._early.arrived(task.run_id)
            return
        if cached is not None:
            cached.executor.evict()
        previous = self._runs.pop(task.run_id, None)
        if previous is not None:
            previous.abandon()
            self._early.left(task.run_id)
        logger.info(
            "run %s: no live execution to continue; asking for a replay",
            task.run_id,
            extra=run_fields(task.run_id, task.workflow_name, task.lease_id),
        )
        self._release_unstarted(task, CONTINUATION_MISSED)

    def _park(self, executor: RunExecutor) -> bool:
        """A run was suspended: keep it live in the cache (evicting the least recent
        run for room); False when it must unwind instead."""
        held = self._runs.get(executor.run_id)
        if held is None or held.executor is not executor or self._draining or self._closed:
            return False
        del self._runs[executor.run_id]
        self._early.left(executor.run_id)
        for evicted in self._cache.put(executor.run_id, held):
            evicted.executor.evict()
        return True

    def _evict_all(self) -> None:
        for held in self._cache.clear():
            held.executor.evict()

    def _release_unstarted(self, task: worker_service_pb2.RunTask, reason: str) -> None:
        command = worker_service_pb2.WorkerCommand(run_id=task.run_id, lease_id=task.lease_id)
        command.release_run.reason = reason
        self.submit(command)

    async def _drive(self, executor: RunExecutor) -> None:
        try:
            outcome = await executor.execute()
            if outcome is RunOutcome.NON_DETERMINISTIC:
                # Neither failed nor completed: the server keeps it held and hands it to
                # a worker whose code has not refused it.
                executor.send_hold()
        except Exception:
            logger.exception("run %s: unexpected worker error", executor.run_id)
        finally:
            held = self._runs.get(executor.run_id)
            if held is not None and held.executor is executor:
                del self._runs[executor.run_id]
                self._early.left(executor.run_id)
            cached = self._cache.get(executor.run_id)
            if cached is not None and cached.executor is executor:
                self._cache.pop(executor.run_id)

    def _cancel(self, cancellation: worker_service_pb2.RunCancellation) -> None:
        cached = self._cache.get(cancellation.run_id)
        if cached is not None and cached.executor.lease_id == cancellation.lease_id:
            self._cache.pop(cancellation.run_id)  # a parked run: nothing of it is queued
            cached.executor.evict()
            logger.debug(
                "run %s: let go: %s",
                cancellation.run_id,
                cancellation.reason or "-",
                extra=run_fields(cancellation.run_id, lease=cancellation.lease_id),
            )
            return
        held = self._runs.get(cancellation.run_id)
        if held is None or held.executor.lease_id != cancellation.lease_id:
            return
        del self._runs[cancellation.run_id]
        self._early.left(cancellation.run_id)
        held.abandon()
        logger.info(
            "run %s: stopped by the server: %s",
            cancellation.run_id,
            cancellation.reason or "-",
            extra=run_fields(cancellation.run_id, lease=cancellation.lease_id),
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
        self._evict_all()
        held_ids = list(self._runs)
        for held in self._runs.values():
            held.abandon()
        self._runs.clear()
        for run_id in held_ids:
            self._early.left(run_id)
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._outbox.clear()
        if self._call is not None:
            self._call.cancel()


def _batches(
    commands: list[worker_service_pb2.WorkerCommand],
) -> Iterator[list[worker_service_pb2.WorkerCommand]]:
    """Split commands into batches of at most ~_MAX_BATCH_BYTES (a bigger one goes
    alone) and _MAX_BATCH_COMMANDS commands."""
    batch: list[worker_service_pb2.WorkerCommand] = []
    size = 0
    for command in commands:
        command_size = command.ByteSize()
        if batch and (size + command_size > _MAX_BATCH_BYTES or len(batch) >= _MAX_BATCH_COMMANDS):
            yield batch
            batch, size = [], 0
        batch.append(command)
        size += command_size
    if batch:
        yield batch
