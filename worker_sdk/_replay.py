"""The replay engine: executes one run task against its journal.

``RunExecutor`` runs the workflow function from the top. Each step call gets
its key synchronously (``name``, ``name#2``, ...); a key found in the journal
returns the recorded outcome without running, any other step runs here and
its outcome is recorded (``record_step``) before the workflow moves past it.
The run ends with ``complete_run`` or ``fail_run``. Commands go through a
``CommandChannel`` (the worker's stream, or an in-memory fake in tests), so
this module knows nothing about gRPC.

Durable waits get wait keys the same way: sleeps (``ctx.sleep``) ``sleep:1``,
``sleep:2``, ...; signal waits (``ctx.wait_for_signal``) ``signal:1``, ... and,
with a timeout, the timer ``signal:N:timeout`` beside the signal wait; event
waits (``ctx.wait_for_event``) ``event:1``, ... (and ``event:N:timeout``), with
``since`` taken at the call and recorded at once as the internal journal entry
``event:N:since`` (a ``record_step`` whose result is ``since`` in Unix ms): the wait
proceeds only once the server acknowledged it, and a replay reads it back, so
the wait begins where it first began even when the run is handed out again
before it was ever suspended. Hook waits (``ctx.wait_for_hook``) use the key
``hook:N`` that ``ctx.create_hook`` gave the hook (and ``hook:N:timeout``); the
hook's token is derived from the RunTask's ``hook_secret`` and the key, the same
on every replay. A call registers its waits as *pending*. When the run is *quiescent* — at least one
wait pending, no step body running, no step outcome waiting for its
acknowledgement, and ``SETTLE_HOPS`` turns of the event loop went by without
the workflow calling or finishing a step or a wait — the executor either
delivers the next met wait of the journal or, once every custom entry is
acknowledged, suspends the run:

- Met waits (``WaitResult`` entries) are delivered one at a time, in the
  order they were met (``met_time``, then journal order), each at a quiescent
  point: just as the server met them, one per suspension. So ``asyncio.wait``
  over several waits sees on replay the same winner as on the first
  execution, even when a loser it kept was met later.
- With no met wait left, it sends ``suspend_run`` with every pending wait and,
  once the server acknowledges it, unwinds the workflow's coroutine by
  raising ``RunSuspended`` where it waits. Nothing is sent for the run after
  that: a ``finally`` block that calls a step or a wait gets ``RunSuspended``
  again.

A met wait that is not pending when its turn comes (the code changed) holds the
run as non-deterministic, like a recorded step the code never calls.

Custom history entries (``ctx.record`` / ``ctx.log``) get keys ``entry:1``,
``entry:2``, ... and are sent at once (``record_event``) without blocking the
workflow; the run completes, fails or suspends only once every one of them is
acknowledged. A replay sends them again under the same keys; the server keeps
the first. An entry the server refuses as INVALID (e.g. over the payload limit)
is dropped with an error in the log; the run goes on.

The executor also owns the run's lifetime on the worker: ``abandon()`` (lease
lost, cancelled by the server, stream gone) cancels the workflow's coroutine
and every step body in flight and sends nothing more; ``drain()`` (shutdown)
lets the step bodies in flight finish and be recorded, but releases the run
(``release_run``) at its next new step instead of starting it; ``release()``
gives the run back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pydantic import TypeAdapter

from stepd._children import ChildHandle, child_result
from stepd._context import WorkflowContext
from stepd._definitions import Step, Workflow, current_scheduler
from stepd._hooks import Hook, hook_token
from stepd._policy import NO_RETRY, RetryPolicy
from stepd._serde import dumps, error_info, loads, payload_text, rebuild_error
from stepd.errors import (
    NonDeterminismError,
    RetryExhaustedError,
    StepdError,
    StepTimeoutError,
    WaitTimeoutError,
    WorkflowContextError,
)
from stepd.v1 import types_pb2, worker_service_pb2

logger = logging.getLogger("stepd.worker")

_OK = worker_service_pb2.COMMAND_STATUS_OK
_DUPLICATE = worker_service_pb2.COMMAND_STATUS_DUPLICATE
_LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST
_INVALID = worker_service_pb2.COMMAND_STATUS_INVALID


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class CommandChannel(Protocol):
    """Where a run's commands go: sends one and resolves with its result."""

    def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult]:
        """Queue ``command`` (run_id and lease_id already set); the future resolves with
        its CommandResult. Raises RunAbandoned when the channel is closed."""
        ...


class RunAbandoned(BaseException):
    """Internal signal: the worker gave the run up and sends nothing more for it.

    A ``BaseException`` so that workflow code's ``except Exception`` cannot
    swallow it.
    """


class LeaseLost(RunAbandoned):
    """The server answered LEASE_LOST: the worker no longer holds the run."""


class CommandRejected(RunAbandoned):
    """The server answered INVALID or INTERNAL_ERROR to a command of the run."""


class RunSuspended(RunAbandoned):
    """The run is suspended: the server holds its waits and wakes it when one is met.

    Raised where the workflow's coroutine waits once the server acknowledged
    ``suspend_run`` (and by any step or wait called after that, e.g. in a
    ``finally`` block), so that the coroutine unwinds without recording
    anything. A ``BaseException``: ``except Exception`` does not catch it.
    """


class RunHeld(RunAbandoned):
    """Replay met a wait in the journal that the code is not waiting on: the run is held
    as non-deterministic. Raised where the workflow's coroutine waits, so it unwinds
    without recording anything; the worker keeps the run until it is taken back or
    released."""


SETTLE_HOPS = 32
"""Turns of the event loop (``call_soon`` hops, no timers) a run must stay quiescent
before the next met wait is delivered or the run is suspended: every callback the run
had ready runs first, and so do chains of up to this many callbacks (task wake-ups,
``gather`` results) that lead from a finished step or wait to the workflow's next
call."""

_Met = tuple[str, types_pb2.WaitResult]


@dataclass(frozen=True, slots=True)
class _EventWait:
    """What an event wait waits for: the event's name, the payload fields it must
    have (a JSON object, or empty for any) and when the wait began (Unix ns)."""

    name: str
    match_json: str
    since_ns: int


@dataclass(frozen=True, slots=True)
class _Spec:
    """One wait of a call, described when the call is made (its key and order fixed)."""

    key: str
    index: int
    fire_ns: int
    signal: str | None
    event: _EventWait | None
    hook: bool
    child: str | None = None


@dataclass(frozen=True, slots=True)
class _Since:
    """When an event wait began (Unix ns, whole ms) and, when this execution recorded
    it, the answer to its ``record_step`` (``event:N:since``); ``unsent`` when it could
    not be sent (the run was ending)."""

    ns: int
    answer: asyncio.Future[worker_service_pb2.CommandResult] | None = None
    unsent: bool = False


@dataclass(slots=True)
class _Wait:
    """A durable wait the workflow is waiting on: a timer, a signal or an event.

    The waits of one call (a signal or event wait and its timeout) share ``future``,
    which resolves with the key of the one that was met and its ``WaitResult``.
    """

    key: str
    index: int  # call order: the order of the waits in suspend_run
    fire_ns: int  # a timer's fire time (Unix ns); 0 for a signal or event wait
    signal: str | None  # a signal wait's signal name; None otherwise
    event: _EventWait | None  # an event wait's condition; None otherwise
    hook: bool  # a hook wait
    future: asyncio.Future[_Met]
    child: str | None = None  # a child wait's child run id


def _since_ns(key: str, record: types_pb2.StepRecord) -> int:
    """The start of an event wait (Unix ns) from its ``event:N:since`` record (Unix ms)."""
    try:
        since_ms = loads(payload_text(record.result))
        if isinstance(since_ms, bool) or not isinstance(since_ms, int):
            raise ValueError(since_ms)
    except (ValueError, StepdError) as exc:
        raise NonDeterminismError(
            f"the journal entry {key} holds {payload_text(record.result)!r}, not the start "
            "of an event wait in Unix ms"
        ) from exc
    return since_ms * 1_000_000


def _met_time_ns(wait: types_pb2.WaitResult) -> int:
    return wait.met_time.ToNanoseconds() if wait.HasField("met_time") else 0


RELEASE_REASON = "worker shutting down"
"""The ``release_run`` reason of a run given back because its worker stops."""


class RunOutcome(enum.Enum):
    """How an execution of a run task ended."""

    COMPLETED = "completed"
    """``complete_run`` was acknowledged."""
    FAILED = "failed"
    """``fail_run`` was acknowledged."""
    ABANDONED = "abandoned"
    """The run was given up (lease lost, command rejected); nothing more is sent."""
    RELEASED = "released"
    """The run was given back to the queue (``release_run``, on shutdown)."""
    NON_DETERMINISTIC = "non_deterministic"
    """The journal holds steps or waits the code never called (or not in that order);
    nothing was sent to finish it."""
    SUSPENDED = "suspended"
    """``suspend_run`` was acknowledged: the server wakes the run when a wait is met."""


class RunExecutor:
    """Executes one run task: the workflow function, replaying its journal."""

    __slots__ = (
        "_abandoned",
        "_activity",
        "_attempts",
        "_channel",
        "_child_count",
        "_counts",
        "_draining",
        "_entry_count",
        "_event_count",
        "_events",
        "_finishing",
        "_gate_future",
        "_gated_keys",
        "_held",
        "_hook_count",
        "_hook_secret",
        "_hooks_waited",
        "_input",
        "_journal",
        "_met",
        "_met_order",
        "_on_park",
        "_parked",
        "_parked_activity",
        "_pending_values",
        "_released",
        "_settling",
        "_signal_count",
        "_since_records",
        "_sleep_count",
        "_step_errors",
        "_step_tasks",
        "_suspended",
        "_suspending",
        "_task",
        "_value_answers",
        "_value_counts",
        "_wait_count",
        "_waits",
        "_workflow",
        "lease_id",
        "non_determinism",
        "run_id",
    )

    def __init__(
        self,
        workflow: Workflow[Any, Any],
        task: worker_service_pb2.RunTask,
        channel: CommandChannel,
        on_park: Callable[[RunExecutor], bool] | None = None,
    ) -> None:
        self.run_id = task.run_id
        self.lease_id = task.lease_id
        self.non_determinism: NonDeterminismError | None = None
        """Set when the execution ended NON_DETERMINISTIC."""
        self._workflow = workflow
        self._channel = channel
        self._input = task.input
        self._journal: dict[str, types_pb2.StepRecord] = {}
        # Failed attempts that are not a step's outcome (retried), by step key, in order.
        self._attempts: dict[str, list[types_pb2.StepRecord]] = {}
        self._met: dict[str, types_pb2.WaitResult] = {}  # met waits not delivered, by key
        # Their keys in the order they were met: by met_time, then journal order.
        self._met_order: deque[str] = deque()
        self._add_entries(task.journal)
        # Sticky execution: asked whether to keep the run live once suspended.
        self._on_park = on_park
        self._parked_activity = -1  # _activity when parked: any change forbids resuming
        self._counts: dict[str, int] = {}
        self._child_count = 0
        # Recorded values (ctx.now/uuid/random): call counts per kind, records held
        # back until the journal's entries are all taken, and records unanswered.
        self._value_counts: dict[str, int] = {}
        self._pending_values: list[worker_service_pb2.WorkerCommand] = []
        self._value_answers: set[asyncio.Future[worker_service_pb2.CommandResult]] = set()
        # New steps and children wait here while the journal holds entries no call took.
        self._gate_future: asyncio.Future[None] | None = None
        self._gated_keys: list[str] = []
        self._sleep_count = 0
        self._signal_count = 0
        self._event_count = 0
        self._hook_count = 0
        self._hook_secret = task.hook_secret
        self._hooks_waited: set[str] = set()  # hooks a wait_for_hook call took
        # record_step of event:N:since not yet answered: the run is not quiescent.
        self._since_records: set[asyncio.Future[worker_service_pb2.CommandResult]] = set()
        self._wait_count = 0  # every wait registered so far: orders the waits
        self._waits: dict[str, _Wait] = {}  # pending waits the workflow awaits, by wait key
        self._entry_count = 0
        self._events: set[asyncio.Future[worker_service_pb2.CommandResult]] = set()  # unacked
        self._held = False  # held as non-deterministic while it waited
        self._activity = 0  # bumped by every step or wait call and every step or wait end
        self._settling = False  # a quiescence check is scheduled
        self._suspending = False  # suspend_run submitted
        self._suspended = False  # suspend_run acknowledged
        # Errors raised out of steps, by id: (error, step key, attempt, recorded traceback).
        self._step_errors: dict[int, tuple[BaseException, str, int, str]] = {}
        self._abandoned = False
        self._draining = False
        self._released = False
        self._finishing = False  # complete_run or fail_run submitted
        self._task: asyncio.Task[Any] | None = None  # the task running execute()
        self._step_tasks: set[asyncio.Task[Any]] = set()  # tasks in a step body or its record
        self._parked: asyncio.Future[None] | None = None  # step calls held back by drain()

    def _add_entries(self, entries: Iterable[types_pb2.JournalEntry]) -> None:
        """Take journal entries in: recorded steps, failed attempts, met waits."""
        met: list[types_pb2.WaitResult] = []
        for entry in entries:
            kind = entry.WhichOneof("entry")
            if kind == "step" and entry.step.attempt_only:
                self._attempts.setdefault(entry.step.step_key, []).append(entry.step)
            elif kind == "step":
                self._journal[entry.step.step_key] = entry.step
            elif kind == "wait" and entry.wait.wait_key not in self._met:
                self._met[entry.wait.wait_key] = entry.wait
                met.append(entry.wait)
        for attempts in self._attempts.values():
            attempts.sort(key=lambda record: record.attempt)
        met.sort(key=_met_time_ns)  # stable
        self._met_order.extend(wait.wait_key for wait in met)

    @property
    def parked(self) -> bool:
        """True while the run is suspended but kept live at its wait (sticky execution)."""
        task = self._task
        return self._suspended and not self._abandoned and task is not None and not task.done()

    def resume(self, task: worker_service_pb2.RunTask) -> bool:
        """Continue a parked run from a continuation task: adopt its lease and its
        entries (the waits met since the suspension) and let the quiescence check
        deliver them, with no replay. False, changing nothing, when the task does
        not continue the lease this run was suspended under, or anything of the
        run moved while it was parked: it then needs a full replay."""
        if (
            not self.parked
            or self._held
            or task.continues_lease != self.lease_id
            or self._activity != self._parked_activity
            or self._parked is not None
        ):
            return False
        self.lease_id = task.lease_id
        self._add_entries(task.journal)
        self._suspending = self._suspended = False
        self._maybe_settle()
        return True

    def evict(self) -> None:
        """Let a parked run go: unwind its coroutine as a suspension without the cache
        does (``RunSuspended`` where it waits). The server still holds its waits."""
        if self.parked:
            self._unwind(lambda: RunSuspended(f"run {self.run_id} is suspended"))

    @property
    def abandoned(self) -> bool:
        """True once the run was given up or released; no command is sent after that."""
        return self._abandoned

    @property
    def released(self) -> bool:
        """True once ``release_run`` was sent for the run."""
        return self._released

    @property
    def suspended(self) -> bool:
        """True once the server acknowledged ``suspend_run`` for the run."""
        return self._suspended

    def abandon(self) -> None:
        """Give the run up silently: send nothing more for it (not even what its running
        steps return) and cancel its coroutine and every step body in flight.

        A step body running in a thread (a sync step) cannot be stopped: it is left
        to finish on its own and its result is dropped.
        """
        self._abandoned = True
        self._cancel_tasks()

    def drain(self) -> None:
        """The worker is shutting down: let the step bodies in flight finish and be
        recorded, but do not start another step. The next new step call releases
        the run (``release_run``) as soon as no step body of it is in flight, so
        another worker takes it at once. Replayed steps and the run's own
        completion still go through.
        """
        if self._draining:
            return
        self._draining = True
        if self.non_determinism is not None:  # held, not executing: give it back now
            self.release()

    def release(self, reason: str = RELEASE_REASON) -> bool:
        """Give the run back to the queue now: send ``release_run`` (its last command)
        and cancel its coroutine and step bodies.

        Returns False, sending nothing, when the run was already given up or its
        ``complete_run`` / ``fail_run`` / ``suspend_run`` is on its way (the server
        decides that one).
        """
        if self._abandoned or self._finishing or self._suspending:
            return False
        self._abandoned = True
        command = worker_service_pb2.WorkerCommand(run_id=self.run_id, lease_id=self.lease_id)
        command.release_run.reason = reason
        try:
            self._channel.submit(command)  # the result does not matter: it is the end
            self._released = True
        except RunAbandoned:  # the channel is closed: the server re-queues the run anyway
            pass
        logger.info("run %s: released: %s", self.run_id, reason)
        self._cancel_tasks()
        return self._released

    def _cancel_tasks(self) -> None:
        parked = self._parked
        if parked is not None and not parked.done():
            parked.set_result(None)  # parked step calls raise RunAbandoned
        try:
            current = asyncio.current_task()
        except RuntimeError:  # no running loop
            current = None
        task = self._task
        if task is not None and task is not current:
            task.cancel()
        for step_task in self._step_tasks:
            if step_task is not current:
                step_task.cancel()
        for wait in self._waits.values():
            wait.future.cancel()  # a waiting task of its own (create_task) is cancelled too

    async def execute(self) -> RunOutcome:
        """Run the workflow to its end and send ``complete_run`` or ``fail_run``.

        Run it in a task of its own: ``abandon()`` and ``release()`` cancel that
        task (the CancelledError propagates out of ``execute()``).
        """
        if self._abandoned:  # given up (or released) before it started
            return RunOutcome.RELEASED if self._released else RunOutcome.ABANDONED
        workflow = self._workflow
        self._task = asyncio.current_task()
        token = current_scheduler.set(self)
        try:
            command = worker_service_pb2.WorkerCommand()
            failure: Exception | None = None
            result_json = ""
            try:
                ctx = WorkflowContext(self.run_id, workflow.name, workflow.version, self)
                try:
                    value = await workflow.fn(*self._arguments(ctx))
                except asyncio.CancelledError as cancelled:
                    if _being_cancelled():
                        raise
                    # Raised by workflow code, not a cancellation of the run: an error.
                    raise RuntimeError(f"CancelledError escaped the workflow: {cancelled}") from (
                        cancelled
                    )
                result_json = dumps(value, workflow.result_adapter)
            except Exception as exc:
                failure = exc
            self._check_live()  # e.g. a finally block returned after the run was suspended
            if self._journal or self._met or self._attempts:
                return self._non_deterministic()
            await self._values_acknowledged()
            await self._events_acknowledged()  # custom entries are durable before the end
            if failure is not None:
                command.fail_run.error.CopyFrom(self._describe(failure))
                outcome = RunOutcome.FAILED
            else:
                command.complete_run.result.json = result_json
                outcome = RunOutcome.COMPLETED
            self._finishing = True
            await self._submit(command)
            return outcome
        except CommandRejected as exc:
            logger.error("run %s: abandoned: %s", self.run_id, exc)
            return RunOutcome.ABANDONED
        except RunAbandoned:
            if self._suspended:
                return RunOutcome.SUSPENDED
            if self._held:
                return self._held_outcome()
            return RunOutcome.RELEASED if self._released else RunOutcome.ABANDONED
        except asyncio.CancelledError:
            if not (self._suspended or self._held):
                raise
            # Cancelled after the suspension was acknowledged (the coroutine was stuck
            # on something other than a wait): the run is safe with the server.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return RunOutcome.SUSPENDED if self._suspended else self._held_outcome()
        finally:
            current_scheduler.reset(token)
            for wait in list(self._waits.values()):
                wait.future.cancel()  # left behind in a task the workflow never awaited

    def _arguments(self, ctx: WorkflowContext) -> tuple[Any, ...]:
        workflow = self._workflow
        if workflow.input_param is None:
            return (ctx,)
        text = payload_text(self._input)
        if workflow.input_optional and text in ("", "null"):
            return (ctx,)
        return (ctx, loads(text, workflow.input_adapter))

    def _non_deterministic(self) -> RunOutcome:
        keys = ", ".join([*sorted(self._journal), *sorted(self._attempts), *sorted(self._met)])
        self._describe_non_determinism(
            f"the journal holds steps or waits this code never called ({keys})"
        )
        return self._held_outcome()

    def _describe_non_determinism(self, what: str) -> None:
        self.non_determinism = NonDeterminismError(
            f"run {self.run_id} of workflow {self._workflow.name!r} version "
            f"{self._workflow.version!r}: {what}; the code changed under a running version. "
            "The run is held until a worker with matching code picks it up."
        )
        logger.error("%s", self.non_determinism)

    def _held_outcome(self) -> RunOutcome:
        """A run held for non-determinism: give it back at once when draining."""
        if self._draining:
            self.release()
            return RunOutcome.RELEASED
        return RunOutcome.NON_DETERMINISTIC

    def _describe(self, exc: BaseException) -> types_pb2.ErrorInfo:
        """The ErrorInfo of the error a run fails with: the step and attempt it came
        from, and the step's recorded traceback when the error was replayed."""
        step_key, attempt, recorded = "", 0, ""
        origin = self._step_errors.get(id(exc))
        if origin is not None and origin[0] is exc:
            step_key, attempt, recorded = origin[1], origin[2], origin[3]
        info = error_info(exc, step_key=step_key, attempt=attempt)
        if recorded:
            info.traceback = (
                f"{info.traceback}\nThe step's own traceback (step {step_key}, attempt "
                f"{attempt}):\n{recorded}"
            )
        return info

    # -- steps ---------------------------------------------------------------

    def call_step(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its step key now; replay it from the journal or run it."""
        name = step.name
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        key = name if count == 1 else f"{name}#{count}"
        self._activity += 1
        record = self._journal.pop(key, None)
        if record is not None:
            failed = self._attempts.pop(key, ())
            self._after_take()
            return self._replay_step(step, key, record, failed)
        return self._run_step(step, key, args, kwargs)

    async def _replay_step(
        self,
        step: Step[Any, Any],
        key: str,
        record: types_pb2.StepRecord,
        failed: Iterable[types_pb2.StepRecord],
    ) -> Any:
        self._check_live()
        policy = self._policy(step)
        for attempt in failed:  # the backoffs before the outcome, as they happened
            if attempt.attempt < record.attempt:
                await self._retry_wait(key, attempt, policy)
        return self._outcome(step, key, record)

    def _policy(self, step: Step[Any, Any]) -> RetryPolicy:
        return step.retry or self._workflow.retry or NO_RETRY

    async def _run_step(
        self, step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        policy = self._policy(step)
        timeout = step.timeout if step.timeout is not None else self._workflow.step_timeout
        attempt = 1
        failed = self._attempts.pop(key, None)
        if failed:
            self._after_take()
        else:  # a new step: not before every entry of the journal was taken
            await self._gate(key)
        if failed:  # replay: attempts that failed before; the last one decides
            last = failed[-1]
            if not policy.retries(rebuild_error(last.error.type, last.error.message), last.attempt):
                for record in failed[:-1]:
                    await self._retry_wait(key, record, policy)
                return await self._record_outcome(step, key, last, policy)
            for record in failed:  # each backoff again, in order: met ones come from the journal
                await self._retry_wait(key, record, policy)
            attempt = last.attempt + 1
        while True:
            if self._draining or self._suspending:
                await self._park()
            self._check_live()
            with self._in_flight():  # the attempt and its record, as one
                record, result_json, error = await self._attempt(
                    step, key, attempt, args, kwargs, timeout
                )
                retry = error is not None and policy.retries(error, attempt)
                record.attempt_only = retry
                result = await self._record(record)
            if result.status == _DUPLICATE:
                if not result.recorded_step.attempt_only:  # an outcome stands: it wins
                    return self._outcome(step, key, result.recorded_step)
                record = result.recorded_step
            if not retry:
                if error is not None:
                    raise self._step_error(error, key, attempt, policy, record.error)
                return loads(result_json, step.result_adapter)
            logger.info(
                "run %s: step %s attempt %d failed (%s); retrying",
                self.run_id,
                key,
                attempt,
                record.error.type,
            )
            await self._retry_wait(key, record, policy)
            attempt = record.attempt + 1

    async def _record(self, record: types_pb2.StepRecord) -> Any:
        """Send ``record_step`` and wait for its answer."""
        await self._values_acknowledged()
        command = worker_service_pb2.WorkerCommand()
        command.record_step.step.CopyFrom(record)
        return await self._submit(command)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Track the current task as a step body (or its record) in flight until the
        block ends: abandon() cancels it, drain() waits for it, and the run is not
        quiescent meanwhile."""
        task = asyncio.current_task()
        assert task is not None
        step_tasks = self._step_tasks
        step_tasks.add(task)
        try:
            yield
        finally:
            step_tasks.discard(task)
            if self._parked is not None and not step_tasks:
                self.release()  # the last step in flight is recorded: give the run back
            self._activity += 1
            self._maybe_settle()

    async def _retry_wait(
        self, key: str, failed: types_pb2.StepRecord, policy: RetryPolicy
    ) -> None:
        """Wait durably until the attempt after ``failed`` may start: a timer wait
        ``retry:KEY:N`` that the server keeps, so a crash changes nothing. The delay
        runs from the failed attempt's recorded end."""
        end_ns = failed.end_time.ToNanoseconds() if failed.HasField("end_time") else time.time_ns()
        delay = policy.delay_after(failed.attempt, f"{self.run_id}:{key}")
        fire_ns = end_ns + int(delay * 1e9)
        wait_key = f"retry:{key}:{failed.attempt}"
        self._activity += 1
        if fire_ns <= time.time_ns() and wait_key not in self._met:
            self._check_live()
            return
        await self._wait((self._spec(wait_key, fire_ns=fire_ns),))

    async def _record_outcome(
        self,
        step: Step[Any, Any],
        key: str,
        last: types_pb2.StepRecord,
        policy: RetryPolicy,
    ) -> Any:
        """Record the last failed attempt as the step's outcome (the policy allows no
        other) and raise its error."""
        self._check_live()
        record = types_pb2.StepRecord()
        record.CopyFrom(last)
        record.attempt_only = False
        with self._in_flight():
            result = await self._record(record)
        if result.status == _DUPLICATE:
            record = result.recorded_step
        return self._outcome(step, key, record)

    def _step_error(
        self,
        error: Exception,
        key: str,
        attempt: int,
        policy: RetryPolicy,
        info: types_pb2.ErrorInfo,
        traceback_text: str = "",
    ) -> Exception:
        """The error a failed step raises in the workflow: its own error, or, when a
        retry policy ran out of attempts, a RetryExhaustedError caused by it."""
        raised: Exception = error
        if policy.max_attempts > 1 and policy.retryable(error):
            raised = RetryExhaustedError(key, attempt, info.type, info.message)
            raised.__cause__ = error
        self._step_errors[id(raised)] = (raised, key, attempt, traceback_text)
        return raised

    async def _park(self) -> None:
        """A new step called after drain(): never start it. Release the run when no
        step body of it is in flight any more (now, or when the last one is
        recorded); release() cancels the parked call's task.

        A step called while ``suspend_run`` is on its way waits here too; the
        answer raises it out (suspended, or given up)."""
        if self._parked is None:
            self._parked = asyncio.get_running_loop().create_future()
        if not self._step_tasks:
            self.release()  # does nothing while suspend_run is on its way
        if not self._abandoned:
            await self._parked
        self._check_live()
        raise RunAbandoned

    async def _attempt(
        self,
        step: Step[Any, Any],
        key: str,
        attempt: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        step_timeout: float | None,
    ) -> tuple[types_pb2.StepRecord, str, Exception | None]:
        """Run the step body once (cancelled after ``step_timeout`` seconds, if set); return
        its StepRecord, result JSON and error."""
        start = time.time_ns()
        result_json = ""
        error: Exception | None = None
        try:
            if step_timeout is None:
                value = await step.invoke(args, kwargs)
            else:
                await self._announce_start(key, attempt, step_timeout)
                value = await self._invoke_with_timeout(step, key, args, kwargs, step_timeout)
            result_json = dumps(value, step.result_adapter)
        except Exception as exc:
            error = exc
        end = time.time_ns()
        record = types_pb2.StepRecord()
        record.step_key = key
        record.attempt = attempt
        record.start_time.FromNanoseconds(start)
        record.end_time.FromNanoseconds(end)
        if error is None:
            record.result.json = result_json
        else:
            record.error.CopyFrom(error_info(error, step_key=key, attempt=attempt))
        return record, result_json, error

    async def _invoke_with_timeout(
        self,
        step: Step[Any, Any],
        key: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        step_timeout: float,
    ) -> Any:
        """Run the body; past ``step_timeout`` cancel it and raise StepTimeoutError (a sync
        body's thread cannot be stopped: it is abandoned)."""
        scope = asyncio.timeout(step_timeout)
        try:
            async with scope:
                return await step.invoke(args, kwargs)
        except TimeoutError:
            if not scope.expired():
                raise  # the body's own TimeoutError
            raise StepTimeoutError(
                f"step {key} did not finish within its timeout of {step_timeout:g} s"
            ) from None

    async def _announce_start(self, key: str, attempt: int, seconds: float) -> None:
        """Send ``start_step`` and wait for its answer, so the server knows of the
        attempt before its body runs (a body that blocks the event loop would keep
        it from being sent at all): the server ends the attempt if this worker
        cannot."""
        command = worker_service_pb2.WorkerCommand()
        start = command.start_step
        start.step_key = key
        start.attempt = attempt
        start.timeout.FromNanoseconds(int(seconds * 1e9))
        await self._submit(command)

    def _outcome(self, step: Step[Any, Any], key: str, record: types_pb2.StepRecord) -> Any:
        """Return a recorded result, or raise the recorded error rebuilt (as the
        RetryExhaustedError it caused when the step's retries ran out)."""
        if record.HasField("error"):
            error = rebuild_error(record.error.type, record.error.message)
            raise self._step_error(
                error, key, record.attempt, self._policy(step), record.error, record.error.traceback
            )
        return loads(payload_text(record.result), step.result_adapter)

    def _check_live(self) -> None:
        """Raise when the run was suspended, held or given up: nothing more runs or is
        sent."""
        if self._suspended:
            raise RunSuspended(f"run {self.run_id} is suspended")
        if self._abandoned:
            raise RunAbandoned
        if self._held:
            raise RunHeld(f"run {self.run_id} is held: {self.non_determinism}")

    # -- waits: sleeps, signals, events, and what ends them ----------------------

    def call_sleep(
        self, *, duration_ns: int | None = None, until_ns: int | None = None
    ) -> Coroutine[Any, Any, None]:
        """Assign the call its wait key now (``sleep:N``). A sleep that ends now or earlier
        returns at once, unless the journal holds it as met; any other is a pending wait."""
        index = self._sleep_count = self._sleep_count + 1
        key = f"sleep:{index}"
        self._activity += 1
        now = time.time_ns()
        fire_ns = until_ns if until_ns is not None else now + (duration_ns or 0)
        if fire_ns <= now and key not in self._met:
            return self._no_wait()
        return self._sleep(self._spec(key, fire_ns=fire_ns))

    def call_signal(
        self, name: str, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its wait keys now: ``signal:N`` for the signal and, with a
        timeout, ``signal:N:timeout`` for a timer beside it (first of the two wins)."""
        index = self._signal_count = self._signal_count + 1
        key = f"signal:{index}"
        self._activity += 1
        specs = [self._spec(key, signal=name)]
        if timeout_ns is not None:
            specs.append(self._spec(f"{key}:timeout", fire_ns=time.time_ns() + timeout_ns))
        return self._signal(key, name, specs, timeout_ns, adapter)

    def call_event(
        self, name: str, *, match_json: str, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its wait keys now: ``event:N`` for the event and, with a
        timeout, the timer ``event:N:timeout`` beside it (fired ``timeout`` after
        ``since``).

        ``since`` is the time of this call, recorded at once as ``event:N:since``
        (``record_step``, not awaited here; the wait proceeds once it is
        acknowledged), or read back from the journal on a replay."""
        index = self._event_count = self._event_count + 1
        key = f"event:{index}"
        self._activity += 1
        specs = [self._spec(key, event=_EventWait(name, match_json, 0))]
        if timeout_ns is not None:
            specs.append(self._spec(f"{key}:timeout"))
        since = self._event_since(f"{key}:since")
        return self._event(key, name, match_json, specs, timeout_ns, adapter, since)

    def _event_since(self, since_key: str) -> _Since:
        """The recorded start of an event wait, or now (whole ms) with its record_step
        sent."""
        record = self._journal.pop(since_key, None)
        if record is not None:
            self._after_take()
            return _Since(_since_ns(since_key, record))
        since_ns = time.time_ns() // 1_000_000 * 1_000_000
        if self._abandoned or self._suspending or self._finishing or self._held:
            return _Since(since_ns, unsent=True)  # the run is ending: nothing is sent
        command = worker_service_pb2.WorkerCommand(run_id=self.run_id, lease_id=self.lease_id)
        step = command.record_step.step
        step.step_key = since_key
        step.attempt = 1
        step.start_time.FromNanoseconds(since_ns)
        step.end_time.FromNanoseconds(since_ns)
        step.result.json = str(since_ns // 1_000_000)
        try:
            answer = self._channel.submit(command)
        except RunAbandoned:  # the channel is closed: the run is lost to this worker
            return _Since(since_ns, unsent=True)
        self._since_records.add(answer)
        answer.add_done_callback(self._since_answered)
        return _Since(since_ns, answer)

    def _since_answered(self, answer: asyncio.Future[worker_service_pb2.CommandResult]) -> None:
        self._since_records.discard(answer)
        self._activity += 1
        if answer.cancelled() or self._abandoned:
            return
        result = answer.result()
        if result.status in (_OK, _DUPLICATE):
            self._maybe_settle()  # the run may have been waiting only for this answer
            return
        if result.status != _LEASE_LOST:
            logger.error(
                "run %s: abandoned: the server answered %s to record_step (an event wait's "
                "start): %s",
                self.run_id,
                worker_service_pb2.CommandStatus.Name(result.status),
                result.message,
            )
        self.abandon()  # the call awaiting the answer (if any) raises too

    def create_hook(self) -> Hook:
        """Assign the hook its wait key now (``hook:N``) and derive its token from the
        run's hook secret: the same key and token on every replay."""
        index = self._hook_count = self._hook_count + 1
        key = f"hook:{index}"
        self._activity += 1
        if not self._hook_secret:
            raise StepdError(
                f"run {self.run_id}: the server sent no hook secret, so it does not serve "
                "hooks; upgrade the stepd server"
            )
        return Hook(
            key=key, token=hook_token(self._hook_secret, self.run_id, key), run_id=self.run_id
        )

    def call_hook(
        self, hook: Hook, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Wait on the hook's key (``hook:N``) and, with a timeout, the timer
        ``hook:N:timeout`` beside it (first of the two wins). A hook is waited on once."""
        key = hook.key
        if hook.run_id != self.run_id or not key.startswith("hook:"):
            raise WorkflowContextError(f"{key} of run {hook.run_id} is not a hook of this run")
        if key in self._hooks_waited:
            raise WorkflowContextError(
                f"{key} was waited on already: a hook executes once and expires when its "
                "wait ends; create a new hook to wait again"
            )
        self._hooks_waited.add(key)
        self._activity += 1
        specs = [self._spec(key, hook=True)]
        if timeout_ns is not None:
            specs.append(self._spec(f"{key}:timeout", fire_ns=time.time_ns() + timeout_ns))
        return self._hook(key, specs, timeout_ns, adapter)

    def _spec(
        self,
        key: str,
        *,
        fire_ns: int = 0,
        signal: str | None = None,
        event: _EventWait | None = None,
        hook: bool = False,
        child: str | None = None,
    ) -> _Spec:
        """A wait's description, numbered in call order."""
        index = self._wait_count = self._wait_count + 1
        return _Spec(key, index, fire_ns, signal, event, hook, child)

    async def _no_wait(self) -> None:
        self._check_live()

    async def _sleep(self, spec: _Spec) -> None:
        await self._wait((spec,))

    async def _signal(
        self,
        key: str,
        name: str,
        specs: list[_Spec],
        timeout_ns: int | None,
        adapter: TypeAdapter[Any],
    ) -> Any:
        met_key, result = await self._wait(specs)
        if met_key != key or result.timed_out:
            timeout = None if timeout_ns is None else timeout_ns / 1e9
            within = "in time" if timeout is None else f"within {timeout:g} s"
            raise WaitTimeoutError(
                f"no signal {name!r} came {within} (wait {key})",
                wait_key=key,
                signal=name,
                timeout=timeout,
            )
        return loads(payload_text(result.payload), adapter)

    async def _event(
        self,
        key: str,
        name: str,
        match_json: str,
        specs: list[_Spec],
        timeout_ns: int | None,
        adapter: TypeAdapter[Any],
        since: _Since,
    ) -> Any:
        since_ns = await self._since_recorded(since)
        specs[0] = replace(specs[0], event=_EventWait(name, match_json, since_ns))
        if timeout_ns is not None:
            specs[1] = replace(specs[1], fire_ns=since_ns + timeout_ns)
        met_key, result = await self._wait(specs)
        if met_key != key or result.timed_out:
            timeout = None if timeout_ns is None else timeout_ns / 1e9
            within = "in time" if timeout is None else f"within {timeout:g} s"
            matching = f" matching {match_json}" if match_json else ""
            raise WaitTimeoutError(
                f"no event {name!r}{matching} came {within} (wait {key})",
                wait_key=key,
                event=name,
                timeout=timeout,
            )
        return loads(payload_text(result.payload), adapter)

    async def _since_recorded(self, since: _Since) -> int:
        """Wait until the start of an event wait is durable; return it (Unix ns). A
        DUPLICATE answer carries the start recorded first, which wins."""
        if since.unsent:
            if self._suspending:
                await self._park()  # suspend_run is on its way: its answer unwinds us
            self._check_live()
            raise RunAbandoned
        answer = since.answer
        if answer is None:
            self._check_live()
            return since.ns
        result = await answer
        status = result.status
        if status == _DUPLICATE:
            self._check_live()
            return _since_ns(result.recorded_step.step_key, result.recorded_step)
        if status == _OK:
            self._check_live()
            return since.ns
        self.abandon()  # done already by _since_answered
        if status == _LEASE_LOST:
            raise LeaseLost(result.message)
        raise RunAbandoned

    async def _hook(
        self, key: str, specs: list[_Spec], timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Any:
        met_key, result = await self._wait(specs)
        if met_key != key or result.timed_out:
            timeout = None if timeout_ns is None else timeout_ns / 1e9
            within = "in time" if timeout is None else f"within {timeout:g} s"
            raise WaitTimeoutError(
                f"hook {key} was not executed {within}; it has expired",
                wait_key=key,
                timeout=timeout,
            )
        return loads(payload_text(result.payload), adapter)

    async def _wait(self, specs: tuple[_Spec, ...] | list[_Spec]) -> _Met:
        """Register the waits of one call as pending and wait until one of them is met."""
        self._check_live()
        future: asyncio.Future[_Met] = asyncio.get_running_loop().create_future()
        waits = self._waits
        for spec in specs:
            waits[spec.key] = _Wait(
                spec.key,
                spec.index,
                spec.fire_ns,
                spec.signal,
                spec.event,
                spec.hook,
                future,
                spec.child,
            )
        self._activity += 1
        self._maybe_settle()
        try:
            # Resolved by _deliver() with a met wait of the journal. Otherwise it ends
            # with RunSuspended once the run is suspended (the wake-up is a new run task
            # that replays it), or is cancelled with the run or by the workflow.
            return await future
        finally:
            for spec in specs:
                waits.pop(spec.key, None)
            self._activity += 1
            self._maybe_settle()

    def _quiescent(self) -> bool:
        """True when the run only waits: no step body running, no step outcome (or event
        wait start) waiting for its acknowledgement, no step call parked, nothing final
        sent."""
        return (
            (bool(self._waits) or bool(self._gated_keys))
            and not self._step_tasks
            and not self._since_records
            and not self._value_answers
            and self._parked is None
            and not (self._abandoned or self._finishing or self._suspending or self._held)
            and self.non_determinism is None
        )

    def _maybe_settle(self) -> None:
        """Start the quiescence check when the run just became quiescent."""
        if self._settling or not self._quiescent():
            return
        self._settling = True
        asyncio.get_running_loop().call_soon(self._settle, self._activity, 0)

    def _settle(self, stamp: int, hops: int) -> None:
        """One hop of the quiescence check: act once the run stayed quiescent, with no
        step or wait called or ended, for SETTLE_HOPS turns of the event loop."""
        if not self._quiescent():
            self._settling = False
            return
        if self._activity != stamp:  # something moved: count again from here
            stamp, hops = self._activity, 0
        elif hops >= SETTLE_HOPS:
            self._settling = False
            if self._met_order:
                self._deliver()
            elif self._journal or self._attempts:
                self._hold_leftover()
            elif self._waits and not self._events:  # else the last answer checks again
                self._suspend()
            return
        else:
            hops += 1
        asyncio.get_running_loop().call_soon(self._settle, stamp, hops)

    def _deliver(self) -> None:
        """Replay the journal's next met wait: the server met it while the run waited as
        it does now. Not pending (the code waits on something else): hold the run."""
        key = self._met_order[0]
        wait = self._waits.get(key)
        if wait is None or wait.future.done():
            if self._journal or self._attempts:
                self._hold_leftover()  # the first difference is a step, name it
            else:
                self._hold(key)
            return
        self._met_order.popleft()
        self._activity += 1
        wait.future.set_result((key, self._met.pop(key)))

    def _hold(self, key: str) -> None:
        """Hold the run as non-deterministic and unwind its coroutine where it waits."""
        self._describe_non_determinism(
            f"the journal's next met wait is {key}, but the code waits on {self._blocked_on()}"
        )
        self._held = True
        self._open_gate()
        self._unwind(lambda: RunHeld(f"run {self.run_id} is held: {key} was met"), abandon=False)

    def _hold_leftover(self) -> None:
        """The code can go no further, yet the journal holds entries it never took: they
        come from other code (a different step where a recorded one stands)."""
        keys = [*self._journal, *(k for k in self._attempts if k not in self._journal)]
        self._describe_non_determinism(
            f"the journal holds {', '.join(keys)} next, but the code calls {self._blocked_on()}"
        )
        self._held = True
        self._open_gate()
        self._unwind(lambda: RunHeld(f"run {self.run_id} is held"), abandon=False)

    def _blocked_on(self) -> str:
        """What the run's code waits on: new steps or children held back, and waits."""
        waits = sorted(self._waits, key=lambda k: self._waits[k].index)
        return ", ".join([*self._gated_keys, *waits]) or "nothing"

    # -- the gate: nothing new before the journal is taken --------------------------

    async def _gate(self, key: str) -> None:
        """Hold back a new step or child (``key``) while the journal still holds entries
        no call took: the code that wrote them may still call them (another branch of
        a gather), or the code changed, which the quiescence check then finds. So a
        changed workflow never runs or records anything of its own over a journal it
        cannot have produced."""
        while self._journal or self._attempts:
            gate = self._gate_future
            if gate is None or gate.done():
                gate = self._gate_future = asyncio.get_running_loop().create_future()
            self._gated_keys.append(key)
            self._activity += 1
            self._maybe_settle()
            try:
                await gate
            finally:
                self._gated_keys.remove(key)
            self._check_live()

    def _after_take(self) -> None:
        """A call took an entry of the journal: open the gate once none is left."""
        if not self._journal and not self._attempts:
            self._open_gate()
            pending, self._pending_values = self._pending_values, []
            for command in pending:
                self._send_value(command)

    def _open_gate(self) -> None:
        gate = self._gate_future
        if gate is not None and not gate.done():
            gate.set_result(None)

    # -- recorded values: ctx.now(), ctx.uuid(), ctx.random() ----------------------

    def call_value(self, kind: str, make: Callable[[], Any]) -> Any:
        """Assign the call its key now (``KIND:N``); return the journal's value for it,
        or ``make()``, recorded (``record_step``, not awaited here: every later record
        of the run, and its end, waits until it is acknowledged)."""
        index = self._value_counts[kind] = self._value_counts.get(kind, 0) + 1
        key = f"{kind}:{index}"
        self._activity += 1
        record = self._journal.pop(key, None)
        if record is not None:
            self._after_take()
            return loads(payload_text(record.result))
        value = make()
        if self._abandoned or self._suspending or self._finishing or self._held:
            return value  # the run is ending: the execution that gets here again records it
        now = time.time_ns()
        command = worker_service_pb2.WorkerCommand(run_id=self.run_id, lease_id=self.lease_id)
        step = command.record_step.step
        step.step_key = key
        step.attempt = 1
        step.start_time.FromNanoseconds(now)
        step.end_time.FromNanoseconds(now)
        step.result.json = dumps(value)
        if self._journal or self._attempts:
            self._pending_values.append(command)  # sent once the journal is all taken
        else:
            self._send_value(command)
        return value

    def _send_value(self, command: worker_service_pb2.WorkerCommand) -> None:
        try:
            answer = self._channel.submit(command)
        except RunAbandoned:  # the channel is closed: the run is lost to this worker
            return
        self._value_answers.add(answer)
        answer.add_done_callback(self._value_answered)

    def _value_answered(self, answer: asyncio.Future[worker_service_pb2.CommandResult]) -> None:
        self._value_answers.discard(answer)
        self._activity += 1
        if answer.cancelled() or self._abandoned:
            return
        result = answer.result()
        if result.status == _OK:
            self._maybe_settle()
            return
        if result.status != _LEASE_LOST:
            # DUPLICATE: another value was recorded first and this execution used its
            # own; give the run up, the next execution reads the recorded one.
            logger.error(
                "run %s: abandoned: the server answered %s to a recorded value: %s",
                self.run_id,
                worker_service_pb2.CommandStatus.Name(result.status),
                result.message,
            )
        self.abandon()

    async def _values_acknowledged(self) -> None:
        """Send the values held back and wait until every recorded value is acknowledged,
        so that nothing recorded after a value can outlive it."""
        pending, self._pending_values = self._pending_values, []
        for command in pending:
            self._send_value(command)
        while self._value_answers:
            await asyncio.wait(set(self._value_answers))
        self._check_live()

    # -- child runs ------------------------------------------------------------------

    def call_child(
        self,
        workflow_name: str,
        version: str,
        input_json: str,
        *,
        detached: bool,
        adapter: TypeAdapter[Any],
    ) -> Coroutine[Any, Any, ChildHandle[Any]]:
        """Assign the call its key now (``child:N``); the coroutine starts the child
        (``start_child``, once: a replay reads the journal's entry) and yields its
        handle."""
        index = self._child_count = self._child_count + 1
        key = f"child:{index}"
        self._activity += 1
        record = self._journal.pop(key, None)
        if record is not None:
            self._after_take()
        return self._start_child(key, workflow_name, version, input_json, detached, adapter, record)

    async def _start_child(
        self,
        key: str,
        workflow_name: str,
        version: str,
        input_json: str,
        detached: bool,
        adapter: TypeAdapter[Any],
        record: types_pb2.StepRecord | None,
    ) -> ChildHandle[Any]:
        if record is None:
            await self._gate(key)
            if self._draining or self._suspending:
                await self._park()
            self._check_live()
            command = worker_service_pb2.WorkerCommand()
            start = command.start_child
            start.child_key = key
            start.workflow_name = workflow_name
            start.workflow_version = version
            start.input.json = input_json
            start.detached = detached
            with self._in_flight():
                await self._values_acknowledged()
                result = await self._submit(command)
            record = result.recorded_step
        else:
            self._check_live()
        try:
            child_id = str(loads(payload_text(record.result))["run_id"])
        except (StepdError, TypeError, KeyError) as exc:
            raise NonDeterminismError(
                f"the journal's {key} holds {payload_text(record.result)!r}, not a child run"
            ) from exc
        return ChildHandle(child_id, key, lambda: self._child_wait(key, child_id, adapter))

    async def _child_wait(self, key: str, child_id: str, adapter: TypeAdapter[Any]) -> Any:
        """Wait durably (``child:N``) until the child ends; its result or ChildFailedError."""
        self._activity += 1
        _, result = await self._wait((self._spec(key, child=child_id),))
        return child_result(key, payload_text(result.payload), adapter)

    # -- holding the run on the server ---------------------------------------------------

    def send_hold(self) -> bool:
        """Give a run held as non-deterministic back to the server (``hold_run``, its last
        command): the server keeps the error on the run and hands it to a worker whose
        code has not refused it. False when nothing was sent."""
        error = self.non_determinism
        if error is None or self._abandoned or self._finishing or self._suspending:
            return False
        self._abandoned = True
        command = worker_service_pb2.WorkerCommand(run_id=self.run_id, lease_id=self.lease_id)
        command.hold_run.error.CopyFrom(error_info(error))
        try:
            self._channel.submit(command)
        except RunAbandoned:  # the channel is closed: the server re-queues the run anyway
            return False
        self._cancel_tasks()
        return True

    def _suspend(self) -> None:
        """Send ``suspend_run`` with every pending wait; the answer unwinds the run."""
        waits = sorted(self._waits.values(), key=lambda wait: wait.index)
        command = worker_service_pb2.WorkerCommand(run_id=self.run_id, lease_id=self.lease_id)
        conditions = command.suspend_run.waits
        for wait in waits:
            condition = conditions.add(wait_key=wait.key)
            if wait.signal is not None:
                condition.signal.name = wait.signal
            elif wait.event is not None:
                condition.event.name = wait.event.name
                condition.event.match_json = wait.event.match_json
                condition.event.since.FromNanoseconds(wait.event.since_ns)
            elif wait.hook:
                condition.hook.SetInParent()
            elif wait.child is not None:
                condition.child.run_id = wait.child
            else:
                condition.timer.fire_time.FromNanoseconds(wait.fire_ns)
        self._suspending = True
        try:
            answer = self._channel.submit(command)
        except RunAbandoned:  # the channel is closed: the run is lost to this worker anyway
            self._unwind(RunAbandoned)
            return
        answer.add_done_callback(self._suspend_answered)
        logger.debug("run %s: suspending on %s", self.run_id, ", ".join(wait.key for wait in waits))

    def _suspend_answered(self, answer: asyncio.Future[worker_service_pb2.CommandResult]) -> None:
        if answer.cancelled() or self._abandoned:  # dropped with the run: abandon() ran
            return
        result = answer.result()
        status = result.status
        if status == _OK:
            self._suspended = True
            if self._on_park is not None and self._on_park(self):
                self._parked_activity = self._activity
                logger.debug("run %s: suspended, kept live", self.run_id)
                return
            logger.debug("run %s: suspended", self.run_id)
            self._unwind(lambda: RunSuspended(f"run {self.run_id} is suspended"))
            return
        if status == _LEASE_LOST:
            self._unwind(lambda: LeaseLost(result.message))
            return
        name = worker_service_pb2.CommandStatus.Name(status)
        logger.error(
            "run %s: abandoned: the server answered %s to suspend_run: %s",
            self.run_id,
            name,
            result.message,
        )
        self._unwind(RunAbandoned)

    def _unwind(self, signal: Callable[[], RunAbandoned], *, abandon: bool = True) -> None:
        """Stop the run after a suspension (or a hold): raise ``signal()`` where it waits
        (and in parked step calls), so that the coroutine unwinds through the user's
        ``finally`` blocks; cancel what is still running SETTLE_HOPS hops later."""
        if abandon:
            self._abandoned = True
        parked = self._parked
        if parked is not None and not parked.done():
            parked.set_result(None)  # parked step calls raise
        for wait in list(self._waits.values()):
            if not wait.future.done():  # the waits of one call share their future
                wait.future.set_exception(signal())
        asyncio.get_running_loop().call_soon(self._reap, 0)

    def _reap(self, hops: int) -> None:
        """Cancel the run's coroutine if it is still running: it awaits something that
        is neither a step nor a wait (so it never saw the suspension)."""
        task = self._task
        if task is None or task.done():
            return
        if hops < SETTLE_HOPS:
            asyncio.get_running_loop().call_soon(self._reap, hops + 1)
            return
        self._cancel_tasks()

    # -- custom history entries ------------------------------------------------------

    def call_record(self, name: str, payload_json: str) -> None:
        """Assign the entry its key now (``entry:N``) and send ``record_event`` without
        waiting for the answer; the run ends or suspends only once it is acknowledged.

        Nothing is sent once the run is suspended, held, finishing or given up: the
        execution that replays this point sends it (the key is the same)."""
        index = self._entry_count = self._entry_count + 1
        self._activity += 1
        if self._abandoned or self._suspending or self._finishing or self._held:
            return
        command = worker_service_pb2.WorkerCommand(run_id=self.run_id, lease_id=self.lease_id)
        event = command.record_event
        event.entry_key = f"entry:{index}"
        event.name = name
        event.payload.json = payload_json
        try:
            answer = self._channel.submit(command)
        except RunAbandoned:  # the channel is closed: the run is lost to this worker
            return
        self._events.add(answer)
        answer.add_done_callback(self._event_answered)

    def _event_answered(self, answer: asyncio.Future[worker_service_pb2.CommandResult]) -> None:
        self._events.discard(answer)
        if answer.cancelled() or self._abandoned:
            return
        result = answer.result()
        status = result.status
        if status == _INVALID:
            # A refused entry (e.g. over the payload limit) is dropped: a log line must
            # not wedge the run. Every replay sends it again and is refused again.
            logger.error(
                "run %s: custom entry dropped: the server answered INVALID to record_event: %s",
                self.run_id,
                result.message,
            )
            status = _OK
        if status in (_OK, _DUPLICATE):
            self._maybe_settle()  # the run may have been waiting only for this answer
            return
        if status != _LEASE_LOST:
            logger.error(
                "run %s: abandoned: the server answered %s to record_event: %s",
                self.run_id,
                worker_service_pb2.CommandStatus.Name(status),
                result.message,
            )
        self.abandon()

    async def _events_acknowledged(self) -> None:
        """Wait until every custom entry sent is acknowledged (each failure abandons)."""
        while self._events:
            await asyncio.wait(set(self._events))
        self._check_live()

    async def _submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> worker_service_pb2.CommandResult:
        if self._abandoned:
            raise RunAbandoned
        command.run_id = self.run_id
        command.lease_id = self.lease_id
        result = await self._channel.submit(command)
        status = result.status
        if status in (_OK, _DUPLICATE):
            return result
        self.abandon()  # cancels the other branches of the run; this one raises below
        if status == _LEASE_LOST:
            raise LeaseLost(result.message)
        name = worker_service_pb2.CommandStatus.Name(status)
        kind = command.WhichOneof("command")
        raise CommandRejected(f"the server answered {name} to {kind}: {result.message}")
