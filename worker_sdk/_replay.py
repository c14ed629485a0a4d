"""The replay engine: executes one run task against its journal.

``RunExecutor`` runs the workflow function from the top. Each step call gets
its key synchronously (``name``, ``name#2``, ...); a key found in the journal
returns the recorded outcome without running, any other step runs here and
its outcome is recorded (``record_step``) before the workflow moves past it.
The run ends with ``complete_run`` or ``fail_run``. Commands go through a
``CommandChannel`` (the worker's stream, or an in-memory fake in tests), so
this module knows nothing about gRPC.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Coroutine
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
    ) -> Awaitable[worker_service_pb2.CommandResult]:
        """Queue ``command`` (run_id and lease_id already set); await its CommandResult."""
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


class RunOutcome(enum.Enum):
    """How an execution of a run task ended."""

    COMPLETED = "completed"
    """``complete_run`` was acknowledged."""
    FAILED = "failed"
    """``fail_run`` was acknowledged."""
    ABANDONED = "abandoned"
    """The run was given up (lease lost, command rejected); nothing more is sent."""
    NON_DETERMINISTIC = "non_deterministic"
    """The journal holds steps the code never called; nothing was sent to finish it."""


class RunExecutor:
    """Executes one run task: the workflow function, replaying its journal."""

    __slots__ = (
        "_abandoned",
        "_channel",
        "_counts",
        "_input",
        "_journal",
        "_step_errors",
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

    @property
    def abandoned(self) -> bool:
        """True once the run was given up; no command is sent after that."""
        return self._abandoned

    def abandon(self) -> None:
        """Give the run up: every later command fails with RunAbandoned, unsent."""
        self._abandoned = True

    async def execute(self) -> RunOutcome:
        """Run the workflow to its end and send ``complete_run`` or ``fail_run``."""
        workflow = self._workflow
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
            await self._submit(command)
            return outcome
        except CommandRejected as exc:
            logger.error("run %s: abandoned: %s", self.run_id, exc)
            return RunOutcome.ABANDONED
        except RunAbandoned:
            return RunOutcome.ABANDONED
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
        if self._abandoned:
            raise RunAbandoned
        # One attempt for now. A RetryPolicy slots in here: loop over attempts,
        # record each failed one, and wait (durably) between them.
        attempt = 1
        command, result_json, error = await self._attempt(step, key, attempt, args, kwargs)
        result = await self._submit(command)
        if result.status == _DUPLICATE:
            return self._outcome(step, key, result.recorded_step)
        if error is not None:
            self._step_errors[id(error)] = (error, key, attempt)
            raise error
        return loads(result_json, step.result_adapter)

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
        self._abandoned = True
        if status == _LEASE_LOST:
            raise LeaseLost(result.message)
        name = worker_service_pb2.CommandStatus.Name(status)
        kind = command.WhichOneof("command")
        raise CommandRejected(f"the server answered {name} to {kind}: {result.message}")
