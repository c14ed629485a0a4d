"""Fakes for SDK unit tests: an in-memory command channel and run-task builders."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

from stepd._serde import error_info
from stepd.v1 import types_pb2, worker_service_pb2

OK = worker_service_pb2.COMMAND_STATUS_OK
HOOK_SECRET = bytes(range(32))  # the run's hook secret in every task of make_task
Responder = Callable[[worker_service_pb2.WorkerCommand], worker_service_pb2.CommandResult | None]


class FakeChannel:
    """A CommandChannel that records commands and answers them in memory.

    ``respond`` returns the result for a command (default OK); returning None
    leaves the command unanswered until ``resolve`` is called.
    """

    def __init__(self, respond: Responder | None = None, *, ordered: bool = False) -> None:
        # As a server's StreamSettings.ordered_commands: True lets a run go on from
        # a step's outcome before its answer.
        self.ordered_commands = ordered
        self.commands: list[worker_service_pb2.WorkerCommand] = []
        self.respond: Responder = respond or (lambda _: ok())
        self.waiting: dict[int, asyncio.Future[worker_service_pb2.CommandResult]] = {}

    def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult]:
        copy = worker_service_pb2.WorkerCommand()
        copy.CopyFrom(command)
        copy.command_id = len(self.commands) + 1
        self.commands.append(copy)
        future = asyncio.get_running_loop().create_future()
        result = self.respond(copy)
        if result is None:
            self.waiting[copy.command_id] = future
        else:
            result.command_id = copy.command_id
            future.set_result(result)
        return future

    def resolve(self, command_id: int, result: worker_service_pb2.CommandResult) -> None:
        self.waiting.pop(command_id).set_result(result)

    async def wait_for_room(self, run_id: str) -> None:
        """No slots here: a run goes on at once."""

    # -- views ---------------------------------------------------------------

    def kinds(self) -> list[str]:
        return [str(c.WhichOneof("command")) for c in self.commands]

    def step_keys(self) -> list[str]:
        return [c.record_step.step.step_key for c in self.commands if c.HasField("record_step")]

    def recorded(self) -> dict[str, types_pb2.StepRecord]:
        return {
            c.record_step.step.step_key: c.record_step.step
            for c in self.commands
            if c.HasField("record_step")
        }

    def final(self) -> worker_service_pb2.WorkerCommand:
        return self.commands[-1]

    def suspensions(self) -> list[dict[str, int]]:
        """Each suspend_run sent: its waits' fire times (ns), by wait key, in order."""
        return [
            {w.wait_key: w.timer.fire_time.ToNanoseconds() for w in c.suspend_run.waits}
            for c in self.commands
            if c.HasField("suspend_run")
        ]

    def waits(self) -> list[dict[str, str | int]]:
        """Each suspend_run sent: by wait key in order, the signal name of a signal wait,
        the event name of an event wait or the fire time (ns) of a timer."""
        return [
            {
                w.wait_key: w.signal.name
                if w.HasField("signal")
                else w.event.name
                if w.HasField("event")
                else w.timer.fire_time.ToNanoseconds()
                for w in c.suspend_run.waits
            }
            for c in self.commands
            if c.HasField("suspend_run")
        ]

    def event_waits(self) -> list[dict[str, tuple[str, str, int]]]:
        """Each suspend_run sent: its event waits' (name, match_json, since in ns), by
        wait key in order."""
        return [
            {
                w.wait_key: (w.event.name, w.event.match_json, w.event.since.ToNanoseconds())
                for w in c.suspend_run.waits
                if w.HasField("event")
            }
            for c in self.commands
            if c.HasField("suspend_run")
        ]

    def events(self) -> list[tuple[str, str, Any]]:
        """Each record_event sent: (entry key, name, payload as JSON values)."""
        return [
            (
                c.record_event.entry_key,
                c.record_event.name,
                json.loads(c.record_event.payload.json or "null"),
            )
            for c in self.commands
            if c.HasField("record_event")
        ]


def ok() -> worker_service_pb2.CommandResult:
    return worker_service_pb2.CommandResult(status=OK)


def result_record(key: str, value: Any) -> types_pb2.StepRecord:
    return types_pb2.StepRecord(
        step_key=key, result=types_pb2.Payload(json=json.dumps(value)), attempt=1
    )


def error_record(key: str, exc: BaseException) -> types_pb2.StepRecord:
    return types_pb2.StepRecord(
        step_key=key, error=error_info(exc, step_key=key, attempt=1), attempt=1
    )


def make_task(
    workflow_name: str = "wf",
    version: str = "1",
    *,
    input: Any = None,
    input_json: str | None = None,
    journal: Mapping[str, Any] | None = None,
    met: Iterable[str | tuple[str, Any] | types_pb2.WaitResult] = (),
    run_id: str = "run-1",
    lease_id: int = 7,
    hook_secret: bytes = HOOK_SECRET,
) -> worker_service_pb2.RunTask:
    """A RunTask; journal maps step keys to results, exceptions, or StepRecords; met
    lists the waits whose WaitResult follows them in the journal, in order: a wait key,
    a (wait key, payload) pair (a met signal or event wait), or a WaitResult."""
    task = worker_service_pb2.RunTask(
        run_id=run_id,
        lease_id=lease_id,
        workflow_name=workflow_name,
        workflow_version=version,
        input=types_pb2.Payload(json=json.dumps(input) if input_json is None else input_json),
        dispatch_count=1,
        hook_secret=hook_secret,
    )
    for sequence, (key, value) in enumerate((journal or {}).items(), start=1):
        if isinstance(value, types_pb2.StepRecord):
            record = value
        elif isinstance(value, BaseException):
            record = error_record(key, value)
        else:
            record = result_record(key, value)
        task.journal.add(sequence=sequence, step=record)
    for sequence, item in enumerate(met, start=len(task.journal) + 1):
        if isinstance(item, types_pb2.WaitResult):
            wait = item
        elif isinstance(item, tuple):
            wait = types_pb2.WaitResult(
                wait_key=item[0], payload=types_pb2.Payload(json=json.dumps(item[1]))
            )
        else:
            wait = types_pb2.WaitResult(wait_key=item)
        if not wait.HasField("met_time"):
            wait.met_time.GetCurrentTime()
        task.journal.add(sequence=sequence, wait=wait)
    return task


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()
