"""The commands a run sends, built from what the replay runtime knows.

Each builder returns a ``WorkerCommand`` without ``run_id`` and ``lease_id``: the
run stamps those when it sends it (``RunExecutor.submit`` / ``send``).
"""

from __future__ import annotations

from collections.abc import Iterable

from stepd._waits import WaitSpec
from stepd.v1 import types_pb2, worker_service_pb2

OK = worker_service_pb2.COMMAND_STATUS_OK
DUPLICATE = worker_service_pb2.COMMAND_STATUS_DUPLICATE
LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST
INVALID = worker_service_pb2.COMMAND_STATUS_INVALID

Command = worker_service_pb2.WorkerCommand
Result = worker_service_pb2.CommandResult


def status_name(status: worker_service_pb2.CommandStatus.ValueType) -> str:
    """The name of a command status (``COMMAND_STATUS_OK``, ...)."""
    return worker_service_pb2.CommandStatus.Name(status)


def record_step(record: types_pb2.StepRecord) -> Command:
    """``record_step`` of a step attempt or outcome."""
    command = Command()
    command.record_step.step.CopyFrom(record)
    return command


def record_value(key: str, result_json: str, at_ns: int) -> Command:
    """``record_step`` of a value the SDK records beside the steps (``now:N``,
    ``event:N:since``, ...): attempt 1, started and ended at ``at_ns``."""
    command = Command()
    step = command.record_step.step
    step.step_key = key
    step.attempt = 1
    step.start_time.FromNanoseconds(at_ns)
    step.end_time.FromNanoseconds(at_ns)
    step.result.json = result_json
    return command


def start_step(key: str, attempt: int, timeout_s: float) -> Command:
    """``start_step``: an attempt with a timeout begins (the server enforces it)."""
    command = Command()
    start = command.start_step
    start.step_key = key
    start.attempt = attempt
    start.timeout.FromNanoseconds(int(timeout_s * 1e9))
    return command


def acquire_rate(name: str, key: str, limit: int, period_ms: int, step_key: str) -> Command:
    """``acquire_rate``: take a turn under a rate limit before a step attempt."""
    command = Command()
    rate = command.acquire_rate
    rate.name = name
    rate.key = key
    rate.limit = limit
    rate.period.FromMilliseconds(period_ms)
    rate.step_key = step_key
    return command


def start_child(
    key: str,
    workflow_name: str,
    version: str,
    input_json: str,
    *,
    detached: bool,
    trace: types_pb2.TraceContext | None = None,
) -> Command:
    """``start_child``: start a child run (once per key), in ``trace`` if given."""
    command = Command()
    start = command.start_child
    start.child_key = key
    start.workflow_name = workflow_name
    start.workflow_version = version
    start.input.json = input_json
    start.detached = detached
    if trace is not None:
        start.trace_context.CopyFrom(trace)
    return command


def record_event(key: str, name: str, payload_json: str, *, progress: bool = False) -> Command:
    """``record_event``: a custom entry of the run's history (``progress``: the run's
    progress)."""
    command = Command()
    event = command.record_event
    event.entry_key = key
    event.name = name
    event.payload.json = payload_json
    event.progress = progress
    return command


def suspend_run(waits: Iterable[WaitSpec]) -> Command:
    """``suspend_run`` with every pending wait, in call order."""
    command = Command()
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
    return command


def complete_run(result_json: str) -> Command:
    """``complete_run`` with the workflow's result."""
    command = Command()
    command.complete_run.result.json = result_json
    return command


def if_steps_recorded(command: Command) -> None:
    """Mark a run's end (``complete_run`` or ``fail_run``) as valid only if the step
    outcomes sent before it were recorded as sent."""
    if command.HasField("complete_run"):
        command.complete_run.if_steps_recorded = True
    else:
        command.fail_run.if_steps_recorded = True


def fail_run(error: types_pb2.ErrorInfo) -> Command:
    """``fail_run`` with the workflow's error."""
    command = Command()
    command.fail_run.error.CopyFrom(error)
    return command


def release_run(reason: str) -> Command:
    """``release_run``: give the run back to the queue unchanged."""
    command = Command()
    command.release_run.reason = reason
    return command


def hold_run(error: types_pb2.ErrorInfo) -> Command:
    """``hold_run``: give back a run held as non-deterministic, with the error."""
    command = Command()
    command.hold_run.error.CopyFrom(error)
    return command
