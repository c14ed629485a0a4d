"""The replay engine: ``RunExecutor`` executes one run task against its journal.

``RunExecutor`` runs the workflow function from the top and coordinates the parts
that do the work, each in its own module:

- state: the journal and its met-wait order (``_journal.py``), the keys calls take
  (``_keys.py``), the answers still out (``_acks.py``), the pending waits
  (``_waits.py``) and where the execution stands (``_phase.py``);
- calls: steps (``_step_calls.py``), durable waits (``_wait_calls.py``), child runs
  (``_child_calls.py``), recorded values and custom entries (``_records.py``);
- the quiescence check (``_settle.py``) and the commands sent (``_commands.py``).

The parts ask the run for what they need through ``RunControl`` (``_control.py``);
commands go through a ``CommandChannel`` (the worker's stream, or an in-memory fake
in tests), so nothing here knows about gRPC.

When the run is *quiescent* — at least one wait pending, no step body running, no
answer it needs out, and ``SETTLE_HOPS`` turns of the event loop went by without
the workflow calling or finishing a step or a wait — the executor either delivers
the next met wait of the journal or, once every custom entry is acknowledged,
suspends the run:

- Met waits are delivered one at a time, in the order they were met, each at a
  quiescent point: just as the server met them, one per suspension. So
  ``asyncio.wait`` over several waits sees on replay the same winner as on the
  first execution, even when a loser it kept was met later.
- With no met wait left, it sends ``suspend_run`` with every pending wait and,
  once the server acknowledges it, unwinds the workflow's coroutine by raising
  ``RunSuspended`` where it waits (or, with a run cache, keeps it parked there
  until a continuation resumes it). Nothing is sent for the run after that: a
  ``finally`` block that calls a step or a wait gets ``RunSuspended`` again.

A met wait that is not pending when its turn comes (the code changed) holds the run
as non-deterministic, like a recorded step the code never calls.

The executor also owns the run's lifetime on the worker: ``abandon()`` (lease lost,
cancelled by the server, stream gone) cancels the workflow's coroutine and every
step body in flight and sends nothing more; ``drain()`` (shutdown) lets the step
bodies in flight finish and be recorded, but releases the run (``release_run``) at
its next new step instead of starting it; ``release()`` gives the run back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn

from pydantic import TypeAdapter

from stepd import _commands as commands
from stepd import _json_logs as json_logs
from stepd import _tracing as tracing
from stepd._acks import Acks, all_answered
from stepd._child_calls import ChildCalls
from stepd._children import ChildHandle
from stepd._context import WorkflowContext
from stepd._control import (
    CommandChannel,
    CommandRejected,
    LeaseLost,
    RunAbandoned,
    RunHeld,
    RunSuspended,
)
from stepd._definitions import Step, Workflow, current_scheduler
from stepd._hooks import Hook
from stepd._journal import Journal
from stepd._keys import Keys
from stepd._phase import Phase, RunOutcome
from stepd._records import Entries, Values
from stepd._runtime import SYSTEM, Runtime
from stepd._serde import dumps, error_info, loads, payload_text
from stepd._settle import SETTLE_HOPS, Settler
from stepd._step_calls import StepCalls
from stepd._wait_calls import WaitCalls
from stepd._waits import Waits
from stepd.errors import NonDeterminismError
from stepd.v1 import types_pb2, worker_service_pb2

logger = logging.getLogger("stepd.worker")

RELEASE_REASON = "worker shutting down"
"""The ``release_run`` reason of a run given back because its worker stops."""


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _sent_time_ns(task: worker_service_pb2.RunTask) -> int:
    """When the server sent ``task``, by its clock (0: it did not say)."""
    return task.sent_time.ToNanoseconds() if task.HasField("sent_time") else 0


class RunExecutor:
    """Executes one run task: the workflow function, replaying its journal."""

    __slots__ = (
        "_acks",
        "_channel",
        "_children",
        "_entries",
        "_input",
        "_journal",
        "_keys",
        "_on_park",
        "_parked",
        "_parked_activity",
        "_phase",
        "_runtime",
        "_settler",
        "_step_tasks",
        "_steps",
        "_task",
        "_trace_task",
        "_values",
        "_wait_calls",
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
        runtime: Runtime = SYSTEM,
    ) -> None:
        self.run_id = task.run_id
        self.lease_id = task.lease_id
        self.non_determinism: NonDeterminismError | None = None
        """Set when the execution found the journal non-deterministic."""
        self._workflow = workflow
        self._runtime = runtime  # the clock, and how the workflow and its steps run
        self._channel = channel
        self._input = task.input
        self._trace_task = task  # what the run attempt's span says
        self._phase = Phase.RUNNING
        # Sticky execution: asked whether to keep the run live once suspended.
        self._on_park = on_park
        self._parked_activity = -1  # activity when parked: any change forbids resuming
        self._task: asyncio.Task[Any] | None = None  # the task running execute()
        self._step_tasks: set[asyncio.Task[Any]] = set()  # tasks in a step body or its record
        self._parked: asyncio.Future[None] | None = None  # new work held back (park())
        # The state the parts share, and the parts.
        self._journal = journal = Journal(task.journal, self._records_taken, _sent_time_ns(task))
        self._keys = keys = Keys()
        self._acks = acks = Acks()
        self._waits = waits = Waits()
        self._settler = settler = Settler(self._quiescent, self._settled)
        clock = runtime.time_ns
        self._values = Values(self, journal, keys, acks, settler, clock)
        self._entries = Entries(self, keys, acks, settler)
        self._wait_calls = wait_calls = WaitCalls(
            self, journal, keys, acks, settler, waits, task.hook_secret, clock
        )
        self._steps = StepCalls(self, workflow, journal, keys, settler, wait_calls, runtime)
        self._children = ChildCalls(self, journal, keys, settler, wait_calls)

    # -- the run's state, as the worker sees it ------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the execution stands."""
        return self._phase

    @property
    def parked(self) -> bool:
        """True while the run is suspended but kept live at its wait (sticky execution)."""
        task = self._task
        return self._phase is Phase.PARKED and task is not None and not task.done()

    @property
    def abandoned(self) -> bool:
        """True once the run was given up or released; no command is sent after that."""
        return self._phase.gone

    @property
    def released(self) -> bool:
        """True once ``release_run`` was sent for the run."""
        return self._phase is Phase.RELEASED

    @property
    def suspended(self) -> bool:
        """True once the server acknowledged ``suspend_run`` for the run."""
        return self._phase.suspended

    # -- the workflow's calls (the StepScheduler of stepd._definitions) ------------------

    def call_step(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its step key now; replay it from the journal or run it."""
        return self._steps.call(step, args, kwargs)

    def call_sleep(
        self, *, duration_ns: int | None = None, until_ns: int | None = None
    ) -> Coroutine[Any, Any, None]:
        """A durable sleep (``sleep:N``)."""
        return self._wait_calls.sleep(duration_ns=duration_ns, until_ns=until_ns)

    def call_signal(
        self, name: str, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """A durable wait for a signal (``signal:N``)."""
        return self._wait_calls.signal(name, timeout_ns=timeout_ns, adapter=adapter)

    def call_event(
        self, name: str, *, match_json: str, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """A durable wait for an event (``event:N``)."""
        return self._wait_calls.event(
            name, match_json=match_json, timeout_ns=timeout_ns, adapter=adapter
        )

    def create_hook(self) -> Hook:
        """The run's next hook (``hook:N``)."""
        return self._wait_calls.create_hook()

    def call_hook(
        self, hook: Hook, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """A durable wait for a hook's execution."""
        return self._wait_calls.hook(hook, timeout_ns=timeout_ns, adapter=adapter)

    def call_record(self, name: str, payload_json: str, *, progress: bool = False) -> None:
        """A custom history entry (``entry:N``), or the run's progress (``progress:N``)."""
        self._entries.call(name, payload_json, progress=progress)

    def call_child(
        self,
        workflow_name: str,
        version: str,
        input_json: str,
        *,
        detached: bool,
        adapter: TypeAdapter[Any],
    ) -> Coroutine[Any, Any, ChildHandle[Any]]:
        """A child run (``child:N``)."""
        return self._children.call(
            workflow_name, version, input_json, detached=detached, adapter=adapter
        )

    def call_value(self, kind: str, make: Callable[[], Any]) -> Any:
        """A recorded value (``KIND:N``)."""
        return self._values.call(kind, make)

    def now_ns(self) -> int:
        """The run's clock: the time, in epoch nanoseconds."""
        return self._runtime.time_ns()

    # -- executing ---------------------------------------------------------------------

    async def execute(self) -> RunOutcome:
        """Run the workflow to its end and send ``complete_run`` or ``fail_run``.

        Run it in a task of its own: ``abandon()`` and ``release()`` cancel that
        task (the CancelledError propagates out of ``execute()``).
        """
        if self._phase.gone:  # given up (or released) before it started
            return RunOutcome.RELEASED if self.released else RunOutcome.ABANDONED
        logged = json_logs.running(
            json_logs.run_fields(self.run_id, self._workflow.name, self.lease_id)
        )
        try:
            with tracing.run_span(self._trace_task) as span:
                outcome = await self._execute(span)
                if span is not None:
                    span.set_attribute("stepd.outcome", outcome.name.lower())
                return outcome
        finally:
            json_logs.done(logged)

    async def _execute(self, span: Any) -> RunOutcome:
        workflow = self._workflow
        self._task = asyncio.current_task()
        token = current_scheduler.set(self)
        try:
            failure: Exception | None = None
            result_json = ""
            try:
                ctx = WorkflowContext(self.run_id, workflow.name, workflow.version, self)
                try:
                    fn = self._runtime.workflow_function(workflow)
                    value = await fn(*self._arguments(ctx))
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
            self.check_live()  # e.g. a finally block returned after the run was suspended
            if self._journal.has_leftovers:
                return self._non_deterministic()
            await self._values.acknowledged()
            await self._entries.acknowledged()  # custom entries are durable before the end
            if failure is not None:
                tracing.failed(span, failure)
                command = commands.fail_run(self._describe(failure))
                outcome = RunOutcome.FAILED
            else:
                command = commands.complete_run(result_json)
                outcome = RunOutcome.COMPLETED
            self._phase = Phase.FINISHING
            if self._acks.steps:
                # Right behind step outcomes not answered yet: the server applies it
                # after them, and only if it recorded them.
                commands.if_steps_recorded(command)
            await self._submit_now(command)
            return outcome
        except CommandRejected as exc:
            logger.error("run %s: abandoned: %s", self.run_id, exc)
            return RunOutcome.ABANDONED
        except RunAbandoned:
            if self._phase.suspended:
                return RunOutcome.SUSPENDED
            if self.non_determinism is not None:
                return self._held_outcome()
            return RunOutcome.RELEASED if self.released else RunOutcome.ABANDONED
        except asyncio.CancelledError:
            if not self._phase.suspended and self.non_determinism is None:
                raise
            # Cancelled after the suspension was acknowledged or the run was held (the
            # coroutine was stuck on something other than a wait): the run is safe
            # with the server.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return RunOutcome.SUSPENDED if self._phase.suspended else self._held_outcome()
        finally:
            current_scheduler.reset(token)
            self._waits.cancel()  # left behind in a task the workflow never awaited

    def _arguments(self, ctx: WorkflowContext) -> tuple[Any, ...]:
        workflow = self._workflow
        if workflow.input_param is None:
            return (ctx,)
        text = payload_text(self._input)
        if workflow.input_optional and text in ("", "null"):
            return (ctx,)
        return (ctx, loads(text, workflow.input_adapter))

    def _describe(self, exc: BaseException) -> types_pb2.ErrorInfo:
        """The ErrorInfo of the error a run fails with: the step and attempt it came
        from, and the step's recorded traceback when the error was replayed."""
        step_key, attempt, recorded = self._steps.origin(exc) or ("", 0, "")
        info = error_info(exc, step_key=step_key, attempt=attempt)
        if recorded:
            info.traceback = (
                f"{info.traceback}\nThe step's own traceback (step {step_key}, attempt "
                f"{attempt}):\n{recorded}"
            )
        return info

    # -- what the parts ask of the run (RunControl) -------------------------------------

    def check_live(self) -> None:
        """Raise when the run was suspended, held or given up: nothing more runs or is
        sent."""
        phase = self._phase
        if phase is Phase.RUNNING:
            return
        if phase.suspended:
            raise RunSuspended(f"run {self.run_id} is suspended")
        if phase.gone:
            raise RunAbandoned
        if phase is Phase.HELD:
            raise RunHeld(f"run {self.run_id} is held: {self.non_determinism}")

    async def gate(self, key: str) -> None:
        """Hold back a new step or child (``key``) while the journal still holds records
        no call took: the code that wrote them may still call them (another branch of
        a gather), or the code changed, which the quiescence check then finds. So a
        changed workflow never runs or records anything of its own over a journal it
        cannot have produced."""
        journal = self._journal
        while journal.has_records:
            gate = journal.gate()
            journal.gated.append(key)
            self._settler.touch()
            self._settler.check()
            try:
                await gate
            finally:
                journal.gated.remove(key)
            self.check_live()

    async def park(self) -> NoReturn:
        """A new step or child called after drain(): never start it. Release the run when
        no step body of it is in flight any more (now, or when the last one is
        recorded); release() cancels the parked call's task.

        A call made while ``suspend_run`` is on its way waits here too; the answer
        raises it out (suspended, or given up)."""
        if self._parked is None:
            self._parked = asyncio.get_running_loop().create_future()
        if not self._step_tasks:
            self.release()  # does nothing while suspend_run is on its way
        if not self._phase.gone:
            await self._parked
        self.check_live()
        raise RunAbandoned

    @property
    def waits_out_early(self) -> bool:
        """Whether the run holds a sleep met early that it has not waited out yet."""
        return self._journal.waits_out_early

    async def wait_for_room(self) -> None:
        """Return once the run may go on past a sleep met early (see ``_early_runs``)."""
        await self._channel.wait_for_room(self.run_id)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Track the current task as a step body (or its record, or a sleep met early
        waiting out the rest of its time) in flight until the block ends: abandon()
        cancels it, drain() waits for it, and the run is not quiescent meanwhile."""
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
            self._settler.touch()
            self._settler.check()

    async def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> worker_service_pb2.CommandResult:
        """Send ``command`` once the step outcomes sent before are answered, and return
        its answer (OK or DUPLICATE); any other answer gives the run up and raises
        (LeaseLost, CommandRejected)."""
        if self._acks.steps:
            await self.outcomes_answered()
        return await self._submit_now(command)

    async def _submit_now(
        self, command: worker_service_pb2.WorkerCommand
    ) -> worker_service_pb2.CommandResult:
        if self._phase.gone:
            raise RunAbandoned
        command.run_id = self.run_id
        command.lease_id = self.lease_id
        result = await self._channel.submit(command)
        status = result.status
        if status in (commands.OK, commands.DUPLICATE):
            return result
        self.abandon()  # cancels the other branches of the run; this one raises below
        if status == commands.LEASE_LOST:
            raise LeaseLost(result.message)
        kind = command.WhichOneof("command")
        raise CommandRejected(
            f"the server answered {commands.status_name(status)} to {kind}: {result.message}"
        )

    async def submit_in_order(
        self, command: worker_service_pb2.WorkerCommand
    ) -> worker_service_pb2.CommandResult:
        """``submit`` once every recorded value sent before is acknowledged."""
        await self._values.acknowledged()
        return await self.submit(command)

    @property
    def goes_on_from_outcomes(self) -> bool:
        """True when the step being executed may send its outcome without waiting for
        the answer: the server applies the run's commands in the order sent (and
        refuses an end sent behind an outcome it did not record), and the step was
        called from the workflow function's own task. A step in a branch of its own
        (``asyncio.gather`` runs each in a task) waits for its answer, or the steps
        its siblings start after it would wait for that answer too."""
        return self._channel.ordered_commands and asyncio.current_task() is self._task

    async def send_outcome(self, command: worker_service_pb2.WorkerCommand) -> None:
        """Send a step's outcome record without waiting for its answer (once every
        recorded value sent before is acknowledged); the answer is checked when it
        comes, and whatever the run sends next, but its end, waits for it."""
        await self._values.acknowledged()
        answer = self.send(command)
        if answer is None:  # the channel is closed: the run is lost to this worker
            raise RunAbandoned
        self._acks.steps.add(answer)
        answer.add_done_callback(self._outcome_answered)

    async def outcomes_answered(self) -> None:
        """Wait until every step outcome sent without waiting is answered."""
        await all_answered(self._acks.steps)
        self.check_live()

    def _outcome_answered(self, answer: asyncio.Future[worker_service_pb2.CommandResult]) -> None:
        self._acks.steps.discard(answer)
        self._settler.touch()
        if answer.cancelled() or self._phase.gone:
            return
        result = answer.result()
        status = result.status
        if status == commands.OK:
            self._settler.check()
            return
        if status == commands.DUPLICATE:
            # Another outcome of the step was recorded first, and the workflow went on
            # from its own. An end already sent is refused for it (the server releases
            # the run); otherwise give the run back: the next execution replays the
            # recorded outcome.
            if self._phase is not Phase.FINISHING and not self.release(
                "a step's outcome was recorded before; replaying it"
            ):
                self.abandon()
            return
        if status != commands.LEASE_LOST:
            logger.error(
                "run %s: abandoned: the server answered %s to a step's outcome: %s",
                self.run_id,
                commands.status_name(status),
                result.message,
            )
        self.abandon()

    def send(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult] | None:
        """Send ``command`` without waiting; None when the channel is closed (the run is
        lost to this worker)."""
        command.run_id = self.run_id
        command.lease_id = self.lease_id
        try:
            return self._channel.submit(command)
        except RunAbandoned:
            return None

    # -- the run's lifetime on the worker ----------------------------------------------

    def abandon(self) -> None:
        """Give the run up silently: send nothing more for it (not even what its running
        steps return) and cancel its coroutine and every step body in flight.

        A step body running in a thread (a sync step) cannot be stopped: it is left
        to finish on its own and its result is dropped.
        """
        phase = self._phase
        if phase is Phase.PARKED:
            self._phase = Phase.SUSPENDED  # the server still holds its waits
        elif not phase.gone:
            self._phase = Phase.ABANDONED
        self._cancel_tasks()

    def drain(self) -> None:
        """The worker is shutting down: let the step bodies in flight finish and be
        recorded, but do not start another step. The next new step call releases
        the run (``release_run``) as soon as no step body of it is in flight, so
        another worker takes it at once. Replayed steps and the run's own
        completion still go through. A run held as non-deterministic is released
        at once.
        """
        if self.non_determinism is not None:
            self.release()
        elif self._phase is Phase.RUNNING:
            self._phase = Phase.DRAINING

    def release(self, reason: str = RELEASE_REASON) -> bool:
        """Give the run back to the queue now: send ``release_run`` (its last command)
        and cancel its coroutine and step bodies.

        Returns False, sending nothing, when the run was already given up or its
        ``complete_run`` / ``fail_run`` / ``suspend_run`` is on its way (the server
        decides that one).
        """
        if not self._phase.may_give_back:
            return False
        released = self.send(commands.release_run(reason)) is not None
        self._phase = Phase.RELEASED if released else Phase.ABANDONED
        logger.info("run %s: released: %s", self.run_id, reason)
        self._cancel_tasks()
        return released

    def send_hold(self) -> bool:
        """Give a run held as non-deterministic back to the server (``hold_run``, its last
        command): the server keeps the error on the run and hands it to a worker whose
        code has not refused it. False when nothing was sent."""
        error = self.non_determinism
        if error is None or not self._phase.may_give_back:
            return False
        self._phase = Phase.ABANDONED
        if self.send(commands.hold_run(error_info(error))) is None:
            return False  # the channel is closed: the server re-queues the run anyway
        self._cancel_tasks()
        return True

    def resume(self, task: worker_service_pb2.RunTask) -> bool:
        """Continue a parked run from a continuation task: adopt its lease and its
        entries (the waits met since the suspension) and let the quiescence check
        deliver them, with no replay. False, changing nothing, when the task does
        not continue the lease this run was suspended under, or anything of the
        run moved while it was parked: it then needs a full replay."""
        if (
            not self.parked
            or task.continues_lease != self.lease_id
            or self._settler.activity != self._parked_activity
            or self._parked is not None
        ):
            return False
        self.lease_id = task.lease_id
        self._journal.add(task.journal, _sent_time_ns(task))
        self._phase = Phase.RUNNING
        self._settler.check()
        return True

    def evict(self) -> None:
        """Let a parked run go: unwind its coroutine as a suspension without the cache
        does (``RunSuspended`` where it waits). The server still holds its waits."""
        if self.parked:
            self._unwind(self._suspension, Phase.SUSPENDED)

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
        self._waits.cancel()  # a waiting task of its own (create_task) is cancelled too

    def _suspension(self) -> RunSuspended:
        return RunSuspended(f"run {self.run_id} is suspended")

    # -- quiescence: deliver a met wait, hold, or suspend ---------------------------------

    def _quiescent(self) -> bool:
        """True when the run only waits: no step body running, no recorded value (or
        event wait start) waiting for its acknowledgement, no step call parked,
        nothing final sent."""
        return (
            (bool(self._waits) or bool(self._journal.gated))
            and not self._step_tasks
            and not self._acks.blocking
            and self._parked is None
            and self._phase.executing
            and self.non_determinism is None
        )

    def _settled(self) -> None:
        """The run stayed quiescent: deliver the journal's next met wait, hold a run
        whose journal the code cannot have produced, or suspend the run."""
        journal = self._journal
        if journal.next_met is not None:
            self._deliver()
        elif journal.has_records:
            self._hold_leftover()
        elif self._waits and not self._acks.entries:  # else the last answer checks again
            self._suspend()

    def _records_taken(self) -> None:
        """The journal's last record was taken: send the values held back."""
        self._values.flush()

    def _deliver(self) -> None:
        """Replay the journal's next met wait: the server met it while the run waited as
        it does now. Not pending (the code waits on something else): hold the run."""
        journal = self._journal
        key = journal.next_met
        assert key is not None
        future = self._waits.future(key)
        if future is None or future.done():
            if journal.has_records:
                self._hold_leftover()  # the first difference is a step, name it
            else:
                self._hold(
                    f"the journal's next met wait is {key}, but the code waits on "
                    f"{self._blocked_on()}",
                    f"{key} was met",
                )
            return
        met = journal.take_next_met()
        self._settler.touch()
        future.set_result(met)

    def _hold_leftover(self) -> None:
        """The code can go no further, yet the journal holds records it never took: they
        come from other code (a different step where a recorded one stands)."""
        keys = ", ".join(self._journal.next_records())
        self._hold(f"the journal holds {keys} next, but the code calls {self._blocked_on()}")

    def _hold(self, what: str, why: str = "") -> None:
        """Hold the run as non-deterministic and unwind its coroutine where it waits; a
        run held while its worker drains is released at once."""
        self._describe_non_determinism(what)
        draining = self._phase is Phase.DRAINING
        self._journal.open_gate()
        message = f"run {self.run_id} is held" + (f": {why}" if why else "")
        self._unwind(lambda: RunHeld(message), Phase.HELD)
        if draining:
            self.release()

    def _blocked_on(self) -> str:
        """What the run's code waits on: new steps or children held back, and waits."""
        waits = [spec.key for spec in self._waits.in_call_order()]
        return ", ".join([*self._journal.gated, *waits]) or "nothing"

    def _non_deterministic(self) -> RunOutcome:
        """The workflow ended, yet the journal holds entries it never took."""
        keys = ", ".join(self._journal.leftovers())
        self._describe_non_determinism(
            f"the journal holds steps or waits this code never called ({keys})"
        )
        draining = self._phase is Phase.DRAINING
        self._phase = Phase.HELD
        if draining:
            self.release()
        return self._held_outcome()

    def _describe_non_determinism(self, what: str) -> None:
        self.non_determinism = NonDeterminismError(
            f"run {self.run_id} of workflow {self._workflow.name!r} version "
            f"{self._workflow.version!r}: {what}; the code changed under a running version. "
            "The run is held until a worker with matching code picks it up."
        )
        logger.error("%s", self.non_determinism)

    def _held_outcome(self) -> RunOutcome:
        """How an execution of a held run ends: released when it was given back."""
        if self._phase is Phase.RELEASED:
            return RunOutcome.RELEASED
        return RunOutcome.NON_DETERMINISTIC

    def _suspend(self) -> None:
        """Send ``suspend_run`` with every pending wait; the answer unwinds the run."""
        waits = self._waits.in_call_order()
        self._phase = Phase.SUSPENDING
        answer = self.send(commands.suspend_run(waits))
        if answer is None:  # the channel is closed: the run is lost to this worker anyway
            self._unwind(RunAbandoned, Phase.ABANDONED)
            return
        answer.add_done_callback(self._suspend_answered)
        logger.debug("run %s: suspending on %s", self.run_id, ", ".join(w.key for w in waits))

    def _suspend_answered(self, answer: asyncio.Future[worker_service_pb2.CommandResult]) -> None:
        if answer.cancelled() or self._phase.gone:  # dropped with the run: abandon() ran
            return
        result = answer.result()
        status = result.status
        if status == commands.OK:
            self._phase = Phase.PARKED
            if self._on_park is not None and self._on_park(self):
                self._parked_activity = self._settler.activity
                logger.debug("run %s: suspended, kept live", self.run_id)
                return
            logger.debug("run %s: suspended", self.run_id)
            self._unwind(self._suspension, Phase.SUSPENDED)
            return
        if status == commands.LEASE_LOST:
            self._unwind(lambda: LeaseLost(result.message), Phase.ABANDONED)
            return
        logger.error(
            "run %s: abandoned: the server answered %s to suspend_run: %s",
            self.run_id,
            commands.status_name(status),
            result.message,
        )
        self._unwind(RunAbandoned, Phase.ABANDONED)

    def _unwind(self, signal: Callable[[], RunAbandoned], phase: Phase) -> None:
        """Stop the run after a suspension (or a hold): move to ``phase``, raise
        ``signal()`` where it waits (and in parked step calls), so that the coroutine
        unwinds through the user's ``finally`` blocks; cancel what is still running
        SETTLE_HOPS hops later."""
        self._phase = phase
        parked = self._parked
        if parked is not None and not parked.done():
            parked.set_result(None)  # parked step calls raise
        self._waits.fail(signal)
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
