"""``WorkflowEnvironment``: a stepd server and a worker in this process, for tests.

The one module of the SDK that imports the server (``stepd.server``, installed
with ``stepd[server]``); ``stepd.testing`` imports it only when
``WorkflowEnvironment`` is first used, so ``import stepd`` and the replayer never
load the server.

The server runs on a temporary SQLite database with a ``SkippingClock``
(``stepd.server.clock``): the engine's now, its timers, delayed starts,
schedules and deadlines, and the worker's clock (``ctx.now()``, when sleeps and
timeouts end) all read it. Time skipping is a task that, while the test waits
for a run's result or sleeps (``env.sleep``), moves that clock to the next due
timer whenever the environment is settled: no run is ready, being handed out or
held by the worker (so no step executes), and no timer is being fired.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from unittest.mock import AsyncMock

from stepd import _runtime
from stepd._client import Client, PublishedEvent, RunHandle
from stepd._definitions import Step, Workflow
from stepd._hooks import hook_token
from stepd._worker import Worker
from stepd.server.clock import SkippingClock
from stepd.server.config import ServerConfig
from stepd.server.engine import hook_tokens
from stepd.server.server import RunningServer, create_server
from stepd.server.store import open_store
from stepd.testing._history import RunHistory
from stepd.testing._mocks import Mocks

_POLL = 0.002  # seconds between two looks at whether time may skip
_START_TIMEOUT = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WorkflowEnvironment:
    """A stepd server and a worker for ``workflows``, in this process, for a test.

    Use as ``async with WorkflowEnvironment([my_workflow]) as env:``; ``env.client``
    triggers runs and waits for them. The server keeps its runs in a temporary
    SQLite database, removed when the environment closes.

    With ``time_skipping`` (the default), the environment's clock skips ahead:
    while the test awaits a run's result (``handle.result()``, ``client.execute``)
    or ``env.sleep(...)``, and nothing in the environment is ready or running (no
    step executes), the clock jumps to the next due time, so durable sleeps, wait
    timeouts, retry backoffs, deadlines and schedules fire at once. Between
    those awaits the clock runs at real speed, so a test can act at a given time
    (``await env.sleep(timedelta(hours=1))``, then signal). ``start_time`` (an
    aware datetime; naive means UTC) is where the clock starts (default: now).

    Only ``workflows`` are served: a run of another workflow stays pending, and
    keeps the clock from skipping.
    """

    def __init__(
        self,
        workflows: Iterable[Workflow[Any, Any]],
        *,
        time_skipping: bool = True,
        start_time: datetime | None = None,
    ) -> None:
        self._workflows = list(workflows)
        if not self._workflows:
            raise ValueError("a WorkflowEnvironment needs at least one workflow to serve")
        for workflow in self._workflows:
            if not isinstance(workflow, Workflow):
                raise TypeError(f"{workflow!r} is not a workflow; decorate it with @workflow")
        start_ms = None
        if start_time is not None:
            if start_time.tzinfo is None:
                start_time = start_time.replace(tzinfo=UTC)
            start_ms = math.floor(start_time.timestamp() * 1000)
        self._time_skipping = time_skipping
        self._clock = SkippingClock(start_ms)
        self._mocks = Mocks()
        # env.sleep() calls in progress: each one's length, end and wake-up.
        self._sleepers: list[_Sleeper] = []
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._server: RunningServer | None = None
        self._client: Client | None = None
        self._worker: Worker | None = None
        self._serving: asyncio.Task[None] | None = None  # the worker's run()
        self._skipping: asyncio.Task[None] | None = None  # _skip_forever()

    # -- life cycle ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the server and the worker (``async with`` does this)."""
        if self._server is not None:
            raise RuntimeError("this environment is already started")
        self._directory = tempfile.TemporaryDirectory(prefix="stepd-test-")
        database = Path(self._directory.name) / "stepd.db"
        await _TEMPLATE.copy_to(database)
        config = ServerConfig(
            address="127.0.0.1:0",
            database=str(database),
            sqlite_synchronous="NORMAL",  # a test's runs need not survive a power cut
            shutdown_grace_seconds=0,
        )
        try:
            self._server = await create_server(config, clock=self._clock)
            self._client = Client(f"127.0.0.1:{self._server.port}")
            runtime = _runtime.Runtime(
                time_ns=self._clock.now_ns,
                run_step=self._mocks.run_step,
                workflow_function=self._mocks.workflow_function,
            )
            with _runtime.using(runtime):
                self._worker = worker = Worker(
                    self._client, self._workflows, identity="stepd.testing", shutdown_grace=1.0
                )
            self._serving = serving = asyncio.create_task(worker.run())
            ready = asyncio.create_task(worker.wait_ready())
            done, _ = await asyncio.wait(
                {ready, serving}, timeout=_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                ready.cancel()
                if serving in done:
                    serving.result()  # raises why the worker stopped
                raise RuntimeError("the test environment's worker did not connect")
            if self._time_skipping:
                self._skipping = asyncio.create_task(self._skip_forever())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the worker and the server and remove the database."""
        skipping, self._skipping = self._skipping, None
        if skipping is not None:
            skipping.cancel()
            await asyncio.gather(skipping, return_exceptions=True)
        if self._worker is not None:
            await self._worker.stop()
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._server is not None:
            await self._server.stop(0)
        if self._directory is not None:
            self._directory.cleanup()
        self._worker = self._client = self._server = self._directory = None

    # -- what tests use ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """A client of the environment's server."""
        if self._client is None:
            raise RuntimeError("the environment is not started; use 'async with'")
        return self._client

    @property
    def address(self) -> str:
        """The server's address (``127.0.0.1:PORT``), for clients of your own."""
        return self.client.address

    def now(self) -> datetime:
        """The environment's time (UTC): what ``ctx.now()`` records in its runs."""
        return _EPOCH + timedelta(microseconds=self._clock.now_ns() // 1000)

    async def sleep(self, duration: float | timedelta) -> None:
        """Let ``duration`` (seconds, or a timedelta) pass on the environment's clock.

        With time skipping, the sleep first lets the environment settle (what
        the test started runs until it waits), then the clock jumps ahead timer
        by timer up to ``duration`` after that moment; it returns once that
        time has come and every run has done what it could until then. So a run
        triggered just before ``env.sleep(timedelta(hours=1))`` has reached its
        first wait when the hour starts. Without skipping, it sleeps for real.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"sleep() takes a duration >= 0, got {duration!r}")
        if not self._time_skipping:
            await asyncio.sleep(seconds)
            return
        sleeper = _Sleeper(math.ceil(seconds * 1000), asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        try:
            await sleeper.woken  # the skipping task wakes it (_skip_forever)
        finally:
            self._sleepers.remove(sleeper)

    def mock_step(
        self, step: Step[Any, Any] | str, return_value: Any = None, *, side_effect: Any = None
    ) -> AsyncMock:
        """Replace a step's body (``step`` or its name) in this environment's runs.

        The body never runs: each attempt awaits the returned ``AsyncMock``
        with the step's arguments, and its ``return_value`` (or what
        ``side_effect`` returns or raises) is the attempt's outcome. Assert on
        the mock as usual (``mock.assert_awaited_once_with(...)``,
        ``mock.await_count``).
        """
        return self._mocks.mock_step(step, return_value, side_effect)

    def mock_workflow(
        self, workflow: Workflow[Any, Any], return_value: Any = None, *, side_effect: Any = None
    ) -> AsyncMock:
        """Replace a workflow's function in this environment's runs (say, a child
        workflow): its runs await the returned ``AsyncMock`` with their input
        instead. Mocking a workflow the environment does not serve adds it,
        before the environment starts."""
        served = any(w.name == workflow.name for w in self._workflows)
        if not served:
            if self._server is not None:
                raise ValueError(
                    f"workflow {workflow.name!r} is not served here; mock it before the "
                    "environment starts, or pass it in its workflows"
                )
            self._workflows.append(workflow)
        return self._mocks.mock_workflow(workflow, return_value, side_effect)

    async def signal(self, run: RunHandle[Any] | str, name: str, payload: Any = None) -> None:
        """Send a run a signal (see ``Client.signal``)."""
        await self.client.signal(_run_id(run), name, payload)

    async def publish_event(
        self, name: str, payload: Any = None, *, event_id: str | None = None
    ) -> PublishedEvent:
        """Publish an event (see ``Client.publish_event``)."""
        return await self.client.publish_event(name, payload, event_id=event_id)

    async def execute_hook(
        self, run: RunHandle[Any] | str, payload: Any = None, *, hook: int = 1
    ) -> None:
        """Execute a run's ``hook``-th hook (``ctx.create_hook()`` calls, counted from 1)
        with ``payload``, without the token the workflow handed out."""
        if isinstance(hook, bool) or not isinstance(hook, int) or hook < 1:
            raise ValueError(f"hook counts a run's hooks from 1, got {hook!r}")
        run_id = _run_id(run)
        server = self._started()
        key = await server.engine.store.server_secret("hook_key")
        token = hook_token(hook_tokens.run_secret(key, run_id), run_id, f"hook:{hook}")
        await self.client.execute_hook(token, payload)

    async def history(self, run: RunHandle[Any] | str) -> RunHistory:
        """A run's history as it stands: its events, to assert on, ``save`` as a file,
        or ``replay`` against changed code."""
        return await RunHistory.fetch(self.client, _run_id(run))

    # -- time skipping --------------------------------------------------------------------

    def _started(self) -> RunningServer:
        if self._server is None:
            raise RuntimeError("the environment is not started; use 'async with'")
        return self._server

    def _settled(self) -> bool:
        """Nothing here moves until the clock does: the engine is settled and no timer
        is due that has not fired."""
        if not self._started().engine.settled():
            return False
        due = self._clock.next_due()
        return due is None or due > self._clock.now_ms()

    async def _skip_forever(self) -> None:
        """Move the clock to the next due time whenever someone waits (a GetRun
        waiting for a run's end, an ``env.sleep``) and the environment is settled;
        wake the sleeps whose time has come once it is settled."""
        engine = self._started().engine
        clock = self._clock
        while True:
            await asyncio.sleep(_POLL)
            sleepers = self._sleepers
            if not sleepers and not engine.waiters.waiting:
                continue  # nobody waits: time goes at its pace
            if not self._settled():
                continue
            now = clock.now_ms()
            for sleeper in sleepers:
                if sleeper.target is None:
                    sleeper.target = now + sleeper.duration_ms  # its clock starts settled
                if sleeper.target <= now and not sleeper.woken.done():
                    sleeper.woken.set_result(None)
            # Up to the next due timer, and no further than the next sleep's end.
            ends = [s.target for s in sleepers if s.target is not None and s.target > now]
            if not ends and not engine.waiters.waiting:
                continue
            due = clock.next_due()
            if due is not None:
                ends.append(due)
            if ends:
                clock.advance_to(min(ends))


class _Sleeper:
    """An ``env.sleep`` in progress: its length, its end on the environment's clock
    (set when the environment first settles after the call) and its wake-up."""

    __slots__ = ("duration_ms", "target", "woken")

    def __init__(self, duration_ms: int, woken: asyncio.Future[None]) -> None:
        self.duration_ms = duration_ms
        self.target: int | None = None
        self.woken = woken


class _TemplateDatabase:
    """An empty database with the schema, made once per process and copied for each
    environment: a copy opens in milliseconds, migrating a new file takes longer."""

    def __init__(self) -> None:
        self._path: Path | None = None

    async def copy_to(self, target: Path) -> None:
        path = self._path
        if path is None or not path.exists():
            directory = Path(tempfile.mkdtemp(prefix="stepd-test-template-"))
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            path = directory / "template.db"
            store = await open_store(str(path), synchronous="NORMAL")
            await store.close()
            self._path = path
        await asyncio.to_thread(shutil.copyfile, path, target)


_TEMPLATE = _TemplateDatabase()


def _run_id(run: RunHandle[Any] | str) -> str:
    if isinstance(run, RunHandle):
        return run.run_id
    if isinstance(run, str) and run:
        return run
    raise TypeError(f"expected a RunHandle or a run id, got {run!r}")
