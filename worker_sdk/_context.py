"""``WorkflowContext``: what a workflow function receives as its first argument."""

from __future__ import annotations

import asyncio
import math
import random as _random
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, overload

from stepd._children import ChildHandle
from stepd._definitions import (
    Step,
    StepDecorator,
    StepScheduler,
    Workflow,
    current_scheduler,
    current_step,
)
from stepd._hooks import Hook, hook_token
from stepd._policy import Duration, RetryPolicy
from stepd._serde import ANY_ADAPTER, adapter_for, dump_input, dumps
from stepd.errors import WaitTimeoutError, WorkflowContextError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The latest time a protobuf Timestamp holds: 9999-12-31T23:59:59.999999999Z.
_MAX_TIME_NS = 253_402_300_799_999_999_999


class WorkflowContext:
    """The running workflow's identity and durable helpers.

    Made by the worker for each execution of a run; workflow code reads
    ``run_id``, ``workflow_name`` and ``version``, wraps ad-hoc functions as
    steps with ``ctx.step``, waits durably with ``ctx.sleep``,
    ``ctx.sleep_until``, ``ctx.wait_for_signal``, ``ctx.wait_for_event`` and
    ``ctx.wait_for_hook`` (several at once with ``ctx.first``), makes hooks with
    ``ctx.create_hook``, and writes custom entries to the run's history with
    ``ctx.log`` and ``ctx.record``.

    A context made by hand (``WorkflowContext("run", "wf", "1")``, e.g. to call a
    workflow function directly in a test) belongs to no run: its steps are plain
    calls, its sleeps are plain ``asyncio.sleep`` calls, no signal, event or hook
    execution ever comes (``wait_for_signal``, ``wait_for_event`` and
    ``wait_for_hook`` time out, or wait forever without a timeout), its hooks'
    tokens are valid for no server, and its history entries go nowhere.
    """

    __slots__ = ("_hook_count", "_run_id", "_scheduler", "_version", "_workflow_name")

    def __init__(
        self,
        run_id: str,
        workflow_name: str,
        version: str,
        scheduler: StepScheduler | None = None,
    ) -> None:
        self._run_id = run_id
        self._workflow_name = workflow_name
        self._version = version
        self._scheduler = scheduler
        self._hook_count = 0  # hooks made by a context of no run

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run_id

    @property
    def workflow_name(self) -> str:
        """The workflow's name."""
        return self._workflow_name

    @property
    def version(self) -> str:
        """The workflow version the run is pinned to."""
        return self._version

    @overload
    def step(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...
    @overload
    def step(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def step(
        self,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
    ) -> StepDecorator: ...
    def step(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Make any function a step of this workflow.

        ``await ctx.step(fetch)(url)`` records the call as step ``fetch``;
        ``@ctx.step`` and ``@ctx.step(name="x", retry=..., timeout=...)`` decorate a
        local function. The step's name defaults to the function's ``__name__``.
        """
        if fn is None:
            return StepDecorator(name, retry, timeout)
        return Step(fn, name=name, retry=retry, timeout=timeout)

    def sleep(self, seconds: float | timedelta, /) -> Coroutine[Any, Any, None]:
        """Sleep durably: ``await ctx.sleep(3600)`` or ``await ctx.sleep(timedelta(days=7))``.

        The wake-up time (now + ``seconds``) is stored by the server. While the
        run has nothing to do but sleep, it is *suspended*: it holds no worker
        slot and survives worker and server restarts; when the time comes, any
        worker picks it up and replays it to this point, where the sleep returns
        at once. A sleep of 0 or fewer seconds returns at once.

        Each call gets a wait key when it is called (``sleep:1``, ``sleep:2``, ...
        in call order, across ``sleep`` and ``sleep_until``), so sleeps started
        together in ``asyncio.gather`` keep their keys on replay. Call it from
        workflow code only: inside a step body it raises ``WorkflowContextError``.
        """
        if isinstance(seconds, timedelta):
            duration_ns = (seconds // _MICROSECOND) * 1000
        elif isinstance(seconds, int | float) and not isinstance(seconds, bool):
            if math.isnan(seconds):
                raise ValueError("ctx.sleep() needs a number of seconds, got nan")
            if math.isinf(seconds) and seconds > 0:
                raise ValueError("ctx.sleep(inf): a sleep must end before the year 10000")
            duration_ns = -1 if seconds < 0 else round(seconds * 1e9)
        else:
            raise TypeError(
                f"ctx.sleep() takes seconds (int or float) or a timedelta, got {seconds!r}"
            )
        scheduler = self._scheduler_for("sleep")
        if duration_ns > _MAX_TIME_NS - time.time_ns():
            raise ValueError(f"ctx.sleep({seconds!r}): a sleep must end before the year 10000")
        if scheduler is None:
            return asyncio.sleep(max(duration_ns, 0) / 1e9)
        return scheduler.call_sleep(duration_ns=duration_ns)

    def sleep_until(self, when: datetime, /) -> Coroutine[Any, Any, None]:
        """Sleep durably until ``when`` (a ``datetime``; a naive one is taken as UTC).

        Like ``ctx.sleep``: the run is suspended until then and the call takes the
        next wait key (``sleep:N``). A time that has passed returns at once.
        """
        if not isinstance(when, datetime):
            raise TypeError(f"ctx.sleep_until() takes a datetime, got {when!r}")
        if when.tzinfo is None or when.utcoffset() is None:
            when = when.replace(tzinfo=UTC)
        until_ns = ((when - _EPOCH) // _MICROSECOND) * 1000
        scheduler = self._scheduler_for("sleep_until")
        if scheduler is None:
            return asyncio.sleep(max(until_ns - time.time_ns(), 0) / 1e9)
        return scheduler.call_sleep(until_ns=until_ns)

    @overload
    def wait_for_signal(
        self, name: str, /, *, timeout: float | timedelta | None = None
    ) -> Coroutine[Any, Any, Any]: ...
    @overload
    def wait_for_signal(
        self, name: str, /, *, timeout: float | timedelta | None = None, type: type[T]
    ) -> Coroutine[Any, Any, T]: ...
    def wait_for_signal(
        self, name: str, /, *, timeout: float | timedelta | None = None, type: Any = None
    ) -> Coroutine[Any, Any, Any]:
        """Wait durably for the next signal ``name`` sent to this run; return its payload.

        ``approval = await ctx.wait_for_signal("approve", timeout=timedelta(days=3),
        type=Approval)``: a client sends it with ``client.signal(run_id, "approve",
        payload)``. Signals wait in a per-run inbox in the order they were sent: each
        call takes the oldest signal of that name that no earlier call took, so a
        signal sent before the workflow got here is not lost, and two signals serve
        two calls, in order. While nothing else runs, the run is *suspended* (no
        worker slot) until the signal comes.

        The payload is plain JSON values, or validated into ``type`` (a pydantic
        model, dataclass, ``int``, ...) when given; a payload that does not fit
        raises ``PayloadError`` here. With ``timeout`` (seconds or a ``timedelta``,
        greater than 0) the call raises ``WaitTimeoutError`` (a ``TimeoutError``)
        when no signal came in time; a signal that comes later is left for the next
        call.

        Wait keys: the call takes ``signal:N`` (N counts this run's
        ``wait_for_signal`` calls from 1, in call order, assigned when it is called)
        and, with a timeout, the timer ``signal:N:timeout``; the first of the two
        to be met wins and the other is dropped.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"ctx.wait_for_signal() needs a non-empty signal name, got {name!r}")
        timeout_ns = None if timeout is None else _timeout_ns(timeout)
        adapter = ANY_ADAPTER if type is None else adapter_for(type)
        scheduler = self._scheduler_for("wait_for_signal")
        if scheduler is None:
            return _nothing_comes(f"signal {name!r}", timeout_ns, signal=name)
        return scheduler.call_signal(name, timeout_ns=timeout_ns, adapter=adapter)

    @overload
    def wait_for_event(
        self,
        name: str,
        /,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: float | timedelta | None = None,
    ) -> Coroutine[Any, Any, Any]: ...
    @overload
    def wait_for_event(
        self,
        name: str,
        /,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: float | timedelta | None = None,
        type: type[T],
    ) -> Coroutine[Any, Any, T]: ...
    def wait_for_event(
        self,
        name: str,
        /,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: float | timedelta | None = None,
        type: Any = None,
    ) -> Coroutine[Any, Any, Any]:
        """Wait durably for an event ``name`` published from now on; return its payload.

        ``paid = await ctx.wait_for_event("order.paid", match={"order": order_id},
        timeout=timedelta(days=3), type=Payment)``: anyone publishes it with
        ``client.publish_event("order.paid", payload)``. Unlike a signal, an event is
        sent to no run in particular: every run waiting for a matching event of that
        name gets it. The wait takes the first event of ``name`` published at or after
        this call whose payload (a JSON object) has every top-level field of ``match``
        with an equal value (no ``match``: any event of the name). An event published
        before the call is not delivered; one published after the call but while the
        workflow still runs (a step gathered with the wait) is. While nothing else
        runs, the run is *suspended* (no worker slot) until the event comes.

        The payload is plain JSON values, or validated into ``type`` (a pydantic
        model, dataclass, ...) when given; a payload that does not fit raises
        ``PayloadError`` here. With ``timeout`` (seconds or a ``timedelta``, greater
        than 0) the call raises ``WaitTimeoutError`` (a ``TimeoutError``) when no
        matching event came in time.

        Wait keys: the call takes ``event:N`` (N counts this run's
        ``wait_for_event`` calls from 1, in call order, assigned when it is called)
        and, with a timeout, the timer ``event:N:timeout``; the first of the two to
        be met wins and the other is dropped. The time the wait began is taken at
        the call; the server keeps the first one it is sent, so a replay keeps it.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"ctx.wait_for_event() needs a non-empty event name, got {name!r}")
        match_json = _match_json(match)
        timeout_ns = None if timeout is None else _timeout_ns(timeout)
        adapter = ANY_ADAPTER if type is None else adapter_for(type)
        scheduler = self._scheduler_for("wait_for_event")
        if scheduler is None:
            return _nothing_comes(f"event {name!r}", timeout_ns, event=name)
        return scheduler.call_event(
            name, match_json=match_json, timeout_ns=timeout_ns, adapter=adapter
        )

    def create_hook(self) -> Hook:
        """Make a hook: a token with which someone outside the run resumes it.

        ``hook = ctx.create_hook()`` returns at once (no round trip) a ``Hook`` whose
        ``token`` you hand out — in an approval link, as a webhook URL — from a step
        (``await send_approval_email(hook.token)``); then ``await
        ctx.wait_for_hook(hook)`` waits until someone calls
        ``client.execute_hook(hook.token, payload)`` and returns the payload.

        Each call takes the wait key ``hook:N`` (N counts this run's ``create_hook``
        calls from 1, in call order) and derives the token from the key and the run's
        secret, so a replay makes the same token. A hook executes once; an execution
        that comes before the run waits is kept until it does. A hook expires when
        its wait is dropped (its timeout or another wait of ``ctx.first`` won) or the
        run ends; executing it then raises ``FailedPreconditionError``.
        """
        scheduler = self._scheduler_for("create_hook")
        if scheduler is None:
            self._hook_count += 1
            key = f"hook:{self._hook_count}"
            return Hook(key=key, token=hook_token(b"", self._run_id, key), run_id=self._run_id)
        return scheduler.create_hook()

    @overload
    def wait_for_hook(
        self, hook: Hook, /, *, timeout: float | timedelta | None = None
    ) -> Coroutine[Any, Any, Any]: ...
    @overload
    def wait_for_hook(
        self, hook: Hook, /, *, timeout: float | timedelta | None = None, type: type[T]
    ) -> Coroutine[Any, Any, T]: ...
    def wait_for_hook(
        self, hook: Hook, /, *, timeout: float | timedelta | None = None, type: Any = None
    ) -> Coroutine[Any, Any, Any]:
        """Wait durably until ``hook`` is executed; return the payload it was executed with.

        ``decision = await ctx.wait_for_hook(hook, timeout=timedelta(days=3),
        type=Decision)``. An execution that came before this call (while a step ran)
        is delivered now. While nothing else runs, the run is *suspended* (no worker
        slot) until the hook is executed.

        The payload is plain JSON values, or validated into ``type`` when given (a
        payload that does not fit raises ``PayloadError`` here). With ``timeout``
        (seconds or a ``timedelta``, greater than 0) the call raises
        ``WaitTimeoutError`` when the hook was not executed in time; the hook has then
        expired, and executing it raises ``FailedPreconditionError``.

        Wait keys: the hook's own key ``hook:N`` and, with a timeout, the timer
        ``hook:N:timeout``. Wait on a hook once: a second call for the same hook raises
        ``WorkflowContextError`` (make a new hook instead). Works with ``ctx.first``
        and ``asyncio.wait`` like the other waits; a hook whose wait lost a
        ``ctx.first`` has expired.
        """
        if not isinstance(hook, Hook):
            raise TypeError(
                f"ctx.wait_for_hook() takes a Hook from ctx.create_hook(), got {hook!r}"
            )
        if hook.run_id != self._run_id:
            raise WorkflowContextError(
                f"{hook.key} belongs to run {hook.run_id}, not to run {self._run_id}: "
                "wait on a hook in the run that created it"
            )
        timeout_ns = None if timeout is None else _timeout_ns(timeout)
        adapter = ANY_ADAPTER if type is None else adapter_for(type)
        scheduler = self._scheduler_for("wait_for_hook")
        if scheduler is None:
            return _nothing_comes(f"execution of {hook.key}", timeout_ns, wait_key=hook.key)
        return scheduler.call_hook(hook, timeout_ns=timeout_ns, adapter=adapter)

    async def first(self, *awaitables: Awaitable[Any]) -> tuple[int, Any]:
        """Wait for the first of several awaitables; return ``(index, value)``.

        ``index, value = await ctx.first(ctx.sleep(3600), ctx.wait_for_signal("approve"))``
        waits for whichever comes first — here a signal or an hour — and cancels
        the others (a cancelled wait is dropped: it is not waited for again and
        consumes no signal or event). ``index`` is the winner's position among the
        arguments. An exception of the winner is raised here
        (e.g. ``WaitTimeoutError``).

        Pass durable waits (``ctx.sleep``, ``ctx.sleep_until``,
        ``ctx.wait_for_signal``, ``ctx.wait_for_event``, ``ctx.wait_for_hook``;
        steps work too). While
        the run has nothing else to do it is suspended with all of them, and it
        wakes when the first one is met; a replay picks the same winner. Plain
        ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` over tasks of the same
        calls works as well, if you want to keep the losers waiting.
        """
        if not awaitables:
            raise ValueError("ctx.first() needs at least one awaitable")
        tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await _cancel_all(tasks)
            raise
        index = next(i for i, task in enumerate(tasks) if task in done)
        winner = tasks[index]
        await _cancel_all(tasks)  # the losers; each unwinds (its waits are dropped) first
        for task in tasks:  # only the winner's outcome counts
            if task is not winner and not task.cancelled():
                task.exception()
        return index, winner.result()

    # -- child runs ------------------------------------------------------------

    @overload
    def start_child(
        self,
        workflow: Workflow[Any, R],
        input: Any = None,
        /,
        *,
        detached: bool = False,
    ) -> Coroutine[Any, Any, ChildHandle[R]]: ...
    @overload
    def start_child(
        self,
        workflow: str,
        input: Any = None,
        /,
        *,
        detached: bool = False,
        version: str | int | None = None,
    ) -> Coroutine[Any, Any, ChildHandle[Any]]: ...
    def start_child(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any = None,
        /,
        *,
        detached: bool = False,
        version: str | int | None = None,
    ) -> Coroutine[Any, Any, ChildHandle[Any]]:
        """Start another workflow as a child run: ``handle = await ctx.start_child(charge,
        order)``, later ``await handle.result()``.

        The call takes the key ``child:N`` (N counts this run's child calls from 1, in
        call order) and the child's run id is ``RUN_ID/child:N``: a replay, or a crash
        anywhere, never starts it twice. The child is pinned to the workflow object's
        version (a name: the newest registered, or ``version``). It is cancelled when
        this run ends before it, unless ``detached=True`` (it then outlives this run).
        Awaiting ``handle.result()`` is a durable wait: while nothing else runs, this
        run is suspended (no worker slot) until the child ends; a failed or cancelled
        child raises ``ChildFailedError``.
        """
        if isinstance(workflow, Workflow):
            name = workflow.name
            pinned = workflow.version if version is None else str(version)
            if workflow.input_param is None and input is not None:
                raise TypeError(f"workflow {name!r} takes no input")
            input_json = dump_input(input, workflow.input_adapter)
            adapter = workflow.result_adapter
        elif isinstance(workflow, str) and workflow:
            name, pinned = workflow, "" if version is None else str(version)
            input_json, adapter = dumps(input), ANY_ADAPTER
        else:
            raise TypeError(f"expected a @workflow or a workflow name, got {workflow!r}")
        scheduler = self._scheduler_for("start_child")
        if scheduler is None:
            raise WorkflowContextError(
                "a WorkflowContext made by hand belongs to no run and cannot start child "
                "runs; run the workflow on a Worker"
            )
        return scheduler.call_child(
            name, pinned, input_json, detached=bool(detached), adapter=adapter
        )

    @overload
    async def child(
        self, workflow: Workflow[Any, R], input: Any = None, /, *, detached: bool = False
    ) -> R: ...
    @overload
    async def child(
        self,
        workflow: str,
        input: Any = None,
        /,
        *,
        detached: bool = False,
        version: str | int | None = None,
    ) -> Any: ...
    async def child(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any = None,
        /,
        *,
        detached: bool = False,
        version: str | int | None = None,
    ) -> Any:
        """Run another workflow as a child and return its result: ``receipt = await
        ctx.child(charge, order)``. Shorthand for ``await (await
        ctx.start_child(...)).result()``; raises ``ChildFailedError`` when the child
        failed or was cancelled. Several at once: ``await asyncio.gather(*(ctx.child(w,
        x) for x in items))``.
        """
        if isinstance(workflow, Workflow):
            started = self.start_child(workflow, input, detached=detached)
        else:
            started = self.start_child(workflow, input, detached=detached, version=version)
        handle: ChildHandle[Any] = await started
        return await handle.result()

    # -- deterministic values -----------------------------------------------------

    def now(self) -> datetime:
        """The current time (UTC), recorded: a replay returns the same value.

        Each call takes the key ``now:N`` in call order; the first execution records
        the worker's clock, every replay reads it back. Use it instead of
        ``datetime.now()`` in workflow code.
        """
        scheduler = self._scheduler_for("now")
        if scheduler is None:
            return datetime.now(UTC)
        micros = scheduler.call_value("now", lambda: scheduler.now_ns() // 1000)
        return _EPOCH + timedelta(microseconds=int(micros))

    def uuid(self) -> _uuid.UUID:
        """A random UUID (version 4), recorded: a replay returns the same one
        (key ``uuid:N``)."""
        scheduler = self._scheduler_for("uuid")
        if scheduler is None:
            return _uuid.uuid4()
        return _uuid.UUID(hex=str(scheduler.call_value("uuid", lambda: _uuid.uuid4().hex)))

    def random(self) -> float:
        """A random float in [0, 1), recorded: a replay returns the same one
        (key ``random:N``)."""
        scheduler = self._scheduler_for("random")
        if scheduler is None:
            return _random.random()
        return float(scheduler.call_value("random", _random.random))

    def log(self, message: str, **fields: Any) -> None:
        """Write a log line to the run's history: ``ctx.log("approved", by="ada")``.

        Shorthand for ``ctx.record("log", {"message": message, **fields})``.
        """
        if not isinstance(message, str):
            raise TypeError(f"ctx.log() takes a message string, got {message!r}")
        self._record("log", "log", {"message": message, **fields})

    def record(self, name: str, payload: Any = None) -> None:
        """Write a custom entry to the run's history: ``ctx.record("progress", {"done": 3})``.

        The entry (``CUSTOM``, with ``name`` and ``payload`` as JSON) shows in
        ``client.list_run_events(run_id)`` and in ``ListRunEvents``. It is written
        once per run however often the workflow is replayed: each call takes the
        key ``entry:N`` (N counts this run's ``record``/``log`` calls from 1, in call
        order) and the server keeps the first entry of each key. The call does not
        wait for the server; the run completes, fails or suspends only once every
        entry is stored. Nothing is written after the run was suspended (e.g. in a
        ``finally`` block around a wait): the execution that reaches that point
        again writes it.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"ctx.record() needs a non-empty entry name, got {name!r}")
        self._record("record", name, payload)

    def set_progress(self, value: Any) -> None:
        """Report the run's progress or a custom status: ``ctx.set_progress({"done": 3,
        "of": 10})``.

        ``value`` is any JSON value (or a model or dataclass). The latest value shows
        as ``RunInfo.progress`` (``GetRun``, ``ListRuns``), in the live run stream
        (``RunHandle.watch``) and as a ``PROGRESS`` history entry. Like ``ctx.record``
        it is replay-safe: each call takes the key ``progress:N`` (in call order) and
        the server keeps the first value of each key, so a replay sends nothing new
        and never moves the progress back. The call does not wait for the server.
        """
        self._record("set_progress", "progress", value, progress=True)

    def _record(self, helper: str, name: str, payload: Any, *, progress: bool = False) -> None:
        payload_json = dumps(payload)
        scheduler = self._scheduler_for(helper)
        if scheduler is not None:
            scheduler.call_record(name, payload_json, progress=progress)

    def _scheduler_for(self, helper: str) -> StepScheduler | None:
        """The run's scheduler, checking that the caller is the run's workflow code."""
        step_name = current_step.get()
        if step_name is not None:
            raise WorkflowContextError(
                f"ctx.{helper}() was called inside the body of step {step_name!r}: a step "
                "body runs once and is not replayed, so it cannot wait durably or write "
                "the run's history. Call it in the workflow between steps (or use "
                "asyncio.sleep inside the step)."
            )
        scheduler = self._scheduler
        if scheduler is not None and current_scheduler.get() is not scheduler:
            raise WorkflowContextError(
                f"ctx.{helper}() was called outside the workflow code of run {self._run_id}: "
                "a WorkflowContext works only in the run it was given to"
            )
        return scheduler

    def __repr__(self) -> str:
        return (
            f"WorkflowContext(run_id={self._run_id!r}, workflow_name={self._workflow_name!r}, "
            f"version={self._version!r})"
        )


def _timeout_ns(timeout: object) -> int:
    """A wait's timeout in nanoseconds (> 0); raise on anything else."""
    if isinstance(timeout, timedelta):
        timeout_ns = (timeout // _MICROSECOND) * 1000
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        if math.isnan(timeout) or math.isinf(timeout):
            raise ValueError(f"a wait's timeout must be a finite number of seconds, not {timeout}")
        timeout_ns = round(timeout * 1e9)
    else:
        raise TypeError(
            f"a wait's timeout is seconds (int or float) or a timedelta, got {timeout!r}"
        )
    if timeout_ns <= 0:
        raise ValueError(f"a wait's timeout must be greater than 0, got {timeout!r}")
    if timeout_ns > _MAX_TIME_NS - time.time_ns():
        raise ValueError(f"timeout={timeout!r}: a wait must end before the year 10000")
    return timeout_ns


def _match_json(match: object) -> str:
    """An event wait's ``match`` as a JSON object ("" for none or an empty one)."""
    if match is None:
        return ""
    if not isinstance(match, Mapping) or not all(isinstance(key, str) for key in match):
        raise TypeError(
            f"ctx.wait_for_event(match=...) takes a dict of payload fields by name, got {match!r}"
        )
    return dumps(dict(match)) if match else ""


async def _nothing_comes(what: str, timeout_ns: int | None, **names: str) -> Any:
    """``wait_for_signal`` / ``wait_for_event`` / ``wait_for_hook`` outside a run: nothing
    ever comes."""
    if timeout_ns is None:
        return await asyncio.get_running_loop().create_future()  # never resolved
    timeout = timeout_ns / 1e9
    await asyncio.sleep(timeout)
    raise WaitTimeoutError(
        f"no {what} came within {timeout:g} s (a context made by hand belongs to no run "
        "and receives no signals, events or hook executions)",
        timeout=timeout,
        **names,
    )


async def _cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the tasks that are not done and wait until they are."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
