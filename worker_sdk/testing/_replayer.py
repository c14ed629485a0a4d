"""``replay``: run a recorded history against the current workflow code, no server.

The history's step outcomes, recorded values and met waits become the run's
journal, and the workflow runs against it exactly as a worker replays a run
(``stepd._replay.RunExecutor``), through a command channel that sends nothing:
no step body runs and nothing is recorded. The replay ends at the first thing
the code does that the journal does not hold (a new step, child, value or
wait, or the run's end), or where the code cannot have produced the journal:
that is non-determinism, as a worker would find it and hold the run.

A run that ended by its own code (completed, or failed because its code
raised) must also end the same way at the end of its journal: code that goes
on instead (a new step, a wait, ...) or ends the other way is reported too. For
a run in flight (or cancelled, or failed by the server: deadline, timeout),
whatever the code does after the journal is fine; that is how a change meets
the runs in flight when it is deployed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from stepd._definitions import Step, Workflow
from stepd._replay import RunExecutor
from stepd._runs import RunStatus
from stepd._runtime import Runtime
from stepd.errors import NonDeterminismError
from stepd.history import RunEvent, RunEventType
from stepd.testing._history import RunHistory
from stepd.v1 import types_pb2, worker_service_pb2

_REPLAY_LEASE = 1
_REPLAY_HOOK_SECRET = b"stepd.testing replay"  # hook tokens made in a replay go nowhere
_VALUE_PREFIXES = ("now:", "uuid:", "random:", "event:")
_OK = worker_service_pb2.COMMAND_STATUS_OK


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What replaying a history against the current code found.

    ``error`` is the non-determinism found (None when the code can take over
    the run); ``next`` says what the code does at the end of the history (e.g.
    ``completes with ...``, ``waits on signal:1``, ``calls step charge``, or
    ``is held`` where it cannot go on).
    """

    run_id: str
    workflow_name: str
    error: NonDeterminismError | None
    next: str

    @property
    def ok(self) -> bool:
        """True when the code replays the history without non-determinism."""
        return self.error is None

    def check(self) -> None:
        """Raise the non-determinism found, if any (for ``assert``-free tests)."""
        if self.error is not None:
            raise self.error


async def replay(history: RunHistory, workflow: Workflow[Any, Any]) -> ReplayResult:
    """Replay ``history`` against ``workflow`` (the current code of the history's
    workflow) without a server, and report any non-determinism.

    Raises ValueError when the history is of another workflow.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(f"replay() needs a @workflow, got {workflow!r}")
    if workflow.name != history.workflow_name:
        raise ValueError(
            f"the history is of workflow {history.workflow_name!r}, not {workflow.name!r}"
        )
    channel = _ReplayChannel()
    runtime = Runtime(run_step=channel.new_step)
    task = worker_service_pb2.RunTask(
        run_id=history.run_id,
        lease_id=_REPLAY_LEASE,
        workflow_name=history.workflow_name,
        workflow_version=history.workflow_version,
        input=types_pb2.Payload(json=json.dumps(history.input)),
        journal=journal_of(history.events),
        dispatch_count=1,
        hook_secret=_REPLAY_HOOK_SECRET,
    )
    executor = RunExecutor(workflow, task, channel, None, runtime)
    execution = asyncio.create_task(executor.execute())
    either: list[asyncio.Future[Any]] = [execution, channel.moved]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not execution.done():
        executor.abandon()
    await asyncio.gather(execution, return_exceptions=True)
    error = executor.non_determinism
    move = channel.move or ("is held" if error is not None else "stops")
    if error is None and history.ended_by_its_code:
        error = _ending_differs(history, channel)
    return ReplayResult(history.run_id, history.workflow_name, error, move)


def _ending_differs(history: RunHistory, channel: _ReplayChannel) -> NonDeterminismError | None:
    """The recorded run ended after its last entry: the code must end the same way."""
    ended = "complete_run" if history.status is RunStatus.COMPLETED else "fail_run"
    if channel.kind == ended:
        return None
    return NonDeterminismError(
        f"run {history.run_id} of workflow {history.workflow_name!r}: the recorded run "
        f"{history.status.value} after its last journal entry, but this code {channel.move}"
    )


def journal_of(events: tuple[RunEvent, ...] | list[RunEvent]) -> list[types_pb2.JournalEntry]:
    """The journal a worker would get for a run with this history: its step outcomes,
    failed attempts and recorded values, and its met waits with what they delivered."""
    journal: list[types_pb2.JournalEntry] = []
    for event in events:
        entry = types_pb2.JournalEntry(sequence=len(journal) + 1)
        if event.type is RunEventType.STEP_COMPLETED and event.key:
            step = entry.step
            step.step_key = event.key
            step.attempt = event.attempt or 1
            step.result.json = json.dumps(event.payload)
            _stamp(step, event)
        elif event.type is RunEventType.STEP_FAILED and event.key:
            step = entry.step
            step.step_key = event.key
            step.attempt = event.attempt or 1
            step.attempt_only = event.attempt_only
            step.error.type = event.error_type or ""
            step.error.message = event.error_message or ""
            step.error.traceback = event.error_traceback or ""
            step.error.step_key = event.key
            step.error.attempt = step.attempt
            _stamp(step, event)
        elif event.type is RunEventType.WAIT_MET and event.key:
            wait = entry.wait
            wait.wait_key = event.key
            if event.time is not None:
                wait.met_time.FromDatetime(event.time)
            if event.payload is not None:
                wait.payload.json = json.dumps(event.payload)
        else:
            continue
        journal.append(entry)
    return journal


def _stamp(step: types_pb2.StepRecord, event: RunEvent) -> None:
    if event.time is not None:
        step.start_time.FromDatetime(event.time)
        step.end_time.FromDatetime(event.time)


class _ReplayChannel:
    """Answers what a replayed run sends without sending anything, and notes the
    first thing the code does past its journal (``move``), where the replay ends."""

    def __init__(self) -> None:
        self.moved: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.kind: str | None = None
        self.move: str | None = None

    def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult]:
        """A custom history entry is answered at once; anything else is the code's
        next move: noted, and never answered (the replay ends there)."""
        answer: asyncio.Future[worker_service_pb2.CommandResult] = (
            asyncio.get_running_loop().create_future()
        )
        kind = command.WhichOneof("command")
        if kind == "record_event":
            answer.set_result(worker_service_pb2.CommandResult(status=_OK))
        elif kind is not None:
            self._note(kind, _describe(command, kind))
        return answer

    async def wait_for_room(self, run_id: str) -> None:
        """A replay holds no worker slot: it goes on at once."""

    @property
    def ordered_commands(self) -> bool:
        """A replay waits for every answer, as against an older server."""
        return False

    def new_step(
        self, step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """A step body the journal does not hold: noted, never run."""
        self._note("step", f"calls step {key}")
        return self._never()

    def _note(self, kind: str, move: str) -> None:
        if self.move is None:
            self.kind, self.move = kind, move
        if not self.moved.done():
            self.moved.set_result(None)

    async def _never(self) -> Any:
        await asyncio.get_running_loop().create_future()  # cancelled when the replay ends


def _describe(command: worker_service_pb2.WorkerCommand, kind: str) -> str:
    if kind == "complete_run":
        return f"completes with {command.complete_run.result.json}"
    if kind == "fail_run":
        error = command.fail_run.error
        return f"fails with {error.type}: {error.message}"
    if kind == "suspend_run":
        keys = ", ".join(w.wait_key for w in command.suspend_run.waits)
        return f"waits on {keys}"
    if kind == "start_child":
        child = command.start_child
        return f"starts child {child.child_key} ({child.workflow_name})"
    if kind == "start_step":
        return f"calls step {command.start_step.step_key}"
    if kind == "acquire_rate":
        return f"calls step {command.acquire_rate.step_key}"
    if kind == "record_step":
        key = command.record_step.step.step_key
        what = "records" if key.startswith(_VALUE_PREFIXES) else "records step"
        return f"{what} {key}"
    return f"sends {kind}"
