"""The replay engine: executes one run task against its journal.

``RunExecutor`` runs the workflow function from the top. Each step call gets
its key synchronously (``name``, ``name#2``, ...); a key found in the journal
returns the recorded outcome without running, any other step runs here and
its outcome is recorded (``record_step``) before the workflow moves past it.
The run ends with ``complete_run`` or ``fail_run``. Commands go through a
``CommandChannel`` (the worker's stream, or an in-memory fake in tests), so
this module knows nothing about gRPC.

The executor also owns the run's lifetime on the worker: ``abandon()`` (lease
lost, cancelled by the server, stream gone) cancels the workflow's coroutine
and every step body in flight and sends nothing more; ``drain()`` (shutdown)
lets the step bodies in flight finish and be recorded, but releases the run
(``release_run``) at its next new step instead of starting it; ``release()``
gives the run back at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from stepd.v1 import types_pb2, worker_service_pb2

from worker_sdk._context import WorkflowContext
from worker_sdk._definitions import Step, Workflow, current_scheduler
from worker_sdk._serde import dumps, error_info, loads, payload_text, rebuild_error
from worker_sdk.errors import NonDeterminismError

logger = logging.getLogger("stepd.worker")

_OK = worker_service_pb2.COMMAND_STATUS_OK
_DUPLICATE = worker_service_pb2.COMMAND_STATUS_DUPLICATE
_LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST


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
    """The journal holds steps the code never called; nothing was sent to finish it."""


class RunExecutor:
    """Executes one run task: the workflow function, replaying its journal."""

    __slots__ = (
        "_abandoned",
        "_channel",
        "_counts",
        "_draining",
        "_finishing",
        "_input",
        "_journal",
        "_parked",
        "_released",
        "_step_errors",
        "_step_tasks",
        "_task",
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
    ) -> None:
        self.run_id = task.run_id
        self.lease_id = task.lease_id
        self.non_determinism: NonDeterminismError | None = None
        """Set when the execution ended NON_DETERMINISTIC."""
        self._workflow = workflow
        self._channel = channel
        self._input = task.input
        self._journal: dict[str, types_pb2.StepRecord] = {
            entry.step.step_key: entry.step for entry in task.journal if entry.HasField("step")
        }
        self._counts: dict[str, int] = {}
        self._step_errors: dict[int, tuple[BaseException, str, int]] = {}
        self._abandoned = False
        self._draining = False
        self._released = False
        self._finishing = False  # complete_run or fail_run submitted
        self._task: asyncio.Task[Any] | None = None  # the task running execute()
        self._step_tasks: set[asyncio.Task[Any]] = set()  # tasks in a step body or its record
        self._parked: asyncio.Future[None] | None = None  # step calls held back by drain()

    @property
    def abandoned(self) -> bool:
        """True once the run was given up or released; no command is sent after that."""
        return self._abandoned

    @property
    def released(self) -> bool:
        """True once ``release_run`` was sent for the run."""
        return self._released

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
        ``complete_run`` / ``fail_run`` is on its way (the server decides that one).
        """
        if self._abandoned or self._finishing:
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
            try:
                ctx = WorkflowContext(self.run_id, workflow.name, workflow.version)
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
                if self._journal:
                    return self._non_deterministic()
                command.fail_run.error.CopyFrom(self._describe(exc))
                outcome = RunOutcome.FAILED
            else:
                if self._journal:
                    return self._non_deterministic()
                command.complete_run.result.json = result_json
                outcome = RunOutcome.COMPLETED
            if self._abandoned:
                raise RunAbandoned
            self._finishing = True
            await self._submit(command)
            return outcome
        except CommandRejected as exc:
            logger.error("run %s: abandoned: %s", self.run_id, exc)
            return RunOutcome.ABANDONED
        except RunAbandoned:
            return RunOutcome.RELEASED if self._released else RunOutcome.ABANDONED
        finally:
            current_scheduler.reset(token)

    def _arguments(self, ctx: WorkflowContext) -> tuple[Any, ...]:
        workflow = self._workflow
        if workflow.input_param is None:
            return (ctx,)
        text = payload_text(self._input)
        if workflow.input_optional and text in ("", "null"):
            return (ctx,)
        return (ctx, loads(text, workflow.input_adapter))

    def _non_deterministic(self) -> RunOutcome:
        keys = ", ".join(sorted(self._journal))
        self.non_determinism = NonDeterminismError(
            f"run {self.run_id} of workflow {self._workflow.name!r} version "
            f"{self._workflow.version!r}: the journal holds steps this code never called "
            f"({keys}); the code changed under a running version. The run is held until a "
            "worker with matching code picks it up."
        )
        logger.error("%s", self.non_determinism)
        if self._draining:
            self.release()
            return RunOutcome.RELEASED
        return RunOutcome.NON_DETERMINISTIC

    def _describe(self, exc: BaseException) -> types_pb2.ErrorInfo:
        step_key, attempt = "", 0
        origin = self._step_errors.get(id(exc))
        if origin is not None and origin[0] is exc:
            step_key, attempt = origin[1], origin[2]
        return error_info(exc, step_key=step_key, attempt=attempt)

    # -- steps ---------------------------------------------------------------

    def call_step(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its step key now; replay it from the journal or run it."""
        name = step.name
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        key = name if count == 1 else f"{name}#{count}"
        record = self._journal.pop(key, None)
        if record is not None:
            return self._replay_step(step, key, record)
        return self._run_step(step, key, args, kwargs)

    async def _replay_step(
        self, step: Step[Any, Any], key: str, record: types_pb2.StepRecord
    ) -> Any:
        return self._outcome(step, key, record)

    async def _run_step(
        self, step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._draining:
            await self._park()
        if self._abandoned:
            raise RunAbandoned
        # The task is tracked until the outcome is acknowledged: abandon() cancels
        # it, and drain() waits for it before releasing the run.
        task = asyncio.current_task()
        assert task is not None
        step_tasks = self._step_tasks
        step_tasks.add(task)
        try:
            # One attempt for now. A RetryPolicy slots in here: loop over attempts,
            # record each failed one, and wait (durably) between them.
            attempt = 1
            command, result_json, error = await self._attempt(step, key, attempt, args, kwargs)
            result = await self._submit(command)
        finally:
            step_tasks.discard(task)
            if self._parked is not None and not step_tasks:
                self.release()  # the last step in flight is recorded: give the run back
        if result.status == _DUPLICATE:
            return self._outcome(step, key, result.recorded_step)
        if error is not None:
            self._step_errors[id(error)] = (error, key, attempt)
            raise error
        return loads(result_json, step.result_adapter)

    async def _park(self) -> None:
        """A new step called after drain(): never start it. Release the run when no
        step body of it is in flight any more (now, or when the last one is
        recorded); release() cancels the parked call's task."""
        if self._parked is None:
            self._parked = asyncio.get_running_loop().create_future()
        if not self._step_tasks:
            self.release()
        if not self._abandoned:
            await self._parked
        raise RunAbandoned

    async def _attempt(
        self,
        step: Step[Any, Any],
        key: str,
        attempt: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[worker_service_pb2.WorkerCommand, str, Exception | None]:
        """Run the step body once; return its record_step command, result JSON and error."""
        start = time.time_ns()
        result_json = ""
        error: Exception | None = None
        try:
            result_json = dumps(await step.invoke(args, kwargs), step.result_adapter)
        except Exception as exc:
            error = exc
        end = time.time_ns()
        command = worker_service_pb2.WorkerCommand()
        record = command.record_step.step
        record.step_key = key
        record.attempt = attempt
        record.start_time.FromNanoseconds(start)
        record.end_time.FromNanoseconds(end)
        if error is None:
            record.result.json = result_json
        else:
            record.error.CopyFrom(error_info(error, step_key=key, attempt=attempt))
        return command, result_json, error

    def _outcome(self, step: Step[Any, Any], key: str, record: types_pb2.StepRecord) -> Any:
        """Return a recorded result, or raise the recorded error rebuilt."""
        if record.HasField("error"):
            error = rebuild_error(record.error.type, record.error.message)
            self._step_errors[id(error)] = (error, key, record.attempt)
            raise error
        return loads(payload_text(record.result), step.result_adapter)

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
