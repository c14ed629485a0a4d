"""Conversions between stepd.v1 messages and the engine's plain data."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from stepd.server.domain import (
    ClaimedRun,
    ErrorDetails,
    FailureReason,
    HistoryEntry,
    HistoryType,
    RunRecord,
    RunStatus,
    StepRow,
    WaitKind,
    WaitRow,
    WaitSpec,
    WorkflowLimits,
)
from stepd.server.engine.commands import (
    Action,
    Command,
    CommandResult,
    CommandStatus,
    CompleteRun,
    FailRun,
    HoldRun,
    PayloadIn,
    RecordEvent,
    RecordStep,
    ReleaseRun,
    StartChild,
    StartStep,
    SuspendRun,
)
from stepd.server.engine.sessions import Cancellation, Outgoing
from stepd.v1 import types_pb2, worker_service_pb2

STATUS_TO_PROTO = {
    RunStatus.PENDING: types_pb2.RUN_STATUS_PENDING,
    RunStatus.RUNNING: types_pb2.RUN_STATUS_RUNNING,
    RunStatus.SUSPENDED: types_pb2.RUN_STATUS_SUSPENDED,
    RunStatus.COMPLETED: types_pb2.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: types_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: types_pb2.RUN_STATUS_CANCELLED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}

REASON_TO_PROTO = {
    FailureReason.WORKFLOW_ERROR: types_pb2.FAILURE_REASON_WORKFLOW_ERROR,
    FailureReason.DEADLINE_EXCEEDED: types_pb2.FAILURE_REASON_DEADLINE_EXCEEDED,
    FailureReason.EXECUTION_TIMEOUT: types_pb2.FAILURE_REASON_EXECUTION_TIMEOUT,
    FailureReason.MAX_ENTRIES_EXCEEDED: types_pb2.FAILURE_REASON_MAX_ENTRIES_EXCEEDED,
}

COMMAND_STATUS_TO_PROTO = {
    CommandStatus.OK: worker_service_pb2.COMMAND_STATUS_OK,
    CommandStatus.DUPLICATE: worker_service_pb2.COMMAND_STATUS_DUPLICATE,
    CommandStatus.LEASE_LOST: worker_service_pb2.COMMAND_STATUS_LEASE_LOST,
    CommandStatus.INVALID: worker_service_pb2.COMMAND_STATUS_INVALID,
    CommandStatus.INTERNAL_ERROR: worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR,
}


def timestamp(ms: int | None) -> Timestamp | None:
    """Epoch milliseconds to a Timestamp (None stays None)."""
    if ms is None:
        return None
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def millis(ts: Timestamp, present: bool) -> int | None:
    """A Timestamp field to epoch milliseconds, None when the field is unset."""
    return ts.ToMilliseconds() if present else None


def error_to_proto(err: ErrorDetails) -> types_pb2.ErrorInfo:
    """ErrorDetails to ErrorInfo."""
    return types_pb2.ErrorInfo(
        type=err.type,
        message=err.message,
        traceback=err.traceback,
        step_key=err.step_key,
        attempt=err.attempt,
    )


def error_from_proto(info: types_pb2.ErrorInfo) -> ErrorDetails:
    """ErrorInfo to ErrorDetails."""
    return ErrorDetails(
        type=info.type or "builtins.Exception",
        message=info.message,
        traceback=info.traceback,
        step_key=info.step_key,
        attempt=info.attempt,
    )


def run_to_proto(run: RunRecord) -> types_pb2.Run:
    """A stored run to a Run message."""
    msg = types_pb2.Run(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=STATUS_TO_PROTO[run.status],
        input=types_pb2.Payload(json=run.input_json),
        parent_run_id=run.parent_run_id or "",
        root_run_id=run.root_run_id or run.run_id,
        idempotency_key=run.idempotency_key or "",
        create_time=timestamp(run.create_time),
        update_time=timestamp(run.update_time),
        start_time=timestamp(run.start_time),
        end_time=timestamp(run.end_time),
        deadline=timestamp(run.deadline),
        execution_deadline=timestamp(run.execution_deadline),
        dispatch_count=run.dispatch_count,
        cancel_reason=run.cancel_reason or "",
        scheduled_start_time=timestamp(run.start_time_not_before),
        schedule_id=run.schedule_id or "",
        schedule_time=timestamp(run.schedule_time),
        detached=run.detached,
    )
    if run.held_error is not None:
        msg.held_error.CopyFrom(error_to_proto(run.held_error))
    if run.result_json is not None:
        msg.result.json = run.result_json
    if run.error is not None:
        msg.error.CopyFrom(error_to_proto(run.error))
    if run.failure_reason is not None:
        msg.failure_reason = REASON_TO_PROTO[run.failure_reason]
    return msg


def step_to_proto(step: StepRow) -> types_pb2.StepRecord:
    """A stored step outcome to a StepRecord."""
    msg = types_pb2.StepRecord(
        step_key=step.step_key,
        attempt=step.attempt,
        start_time=timestamp(step.start_time),
        end_time=timestamp(step.end_time),
        attempt_only=step.attempt_only,
    )
    if step.error is not None:
        msg.error.CopyFrom(error_to_proto(step.error))
    else:
        msg.result.json = step.result_json or "null"
    return msg


def wait_to_proto(wait: WaitRow) -> types_pb2.WaitResult:
    """A met wait to a WaitResult."""
    msg = types_pb2.WaitResult(
        wait_key=wait.wait_key, met_time=timestamp(wait.met_time), timed_out=wait.timed_out
    )
    if wait.payload_json is not None:
        msg.payload.json = wait.payload_json
    return msg


HISTORY_TO_PROTO = {
    t: types_pb2.RunEventType.Value(f"RUN_EVENT_TYPE_{t.name}") for t in HistoryType
}


def history_to_proto(sequence: int, entry: HistoryEntry) -> types_pb2.RunEvent:
    """One history entry (at its position in the run's history) to a RunEvent."""
    msg = types_pb2.RunEvent(
        sequence=sequence,
        time=timestamp(entry.time),
        type=HISTORY_TO_PROTO[entry.type],
        key=entry.key,
        name=entry.name,
        attempt=entry.attempt,
        detail=entry.detail,
        actor_key_id=entry.actor,
    )
    if entry.payload_json is not None:
        msg.payload.json = entry.payload_json
    if entry.error is not None:
        msg.error.CopyFrom(error_to_proto(entry.error))
    return msg


def task_to_proto(claimed: ClaimedRun) -> worker_service_pb2.RunTask:
    """A claimed run to the RunTask a worker executes."""
    run = claimed.run
    return worker_service_pb2.RunTask(
        run_id=run.run_id,
        lease_id=run.lease_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        input=types_pb2.Payload(json=run.input_json),
        journal=sorted(
            [
                *(
                    types_pb2.JournalEntry(sequence=step.sequence, step=step_to_proto(step))
                    for step in claimed.journal
                ),
                *(
                    types_pb2.JournalEntry(sequence=wait.sequence, wait=wait_to_proto(wait))
                    for wait in claimed.waits
                ),
            ],
            key=lambda entry: entry.sequence,
        ),
        deadline=timestamp(run.deadline),
        dispatch_count=run.dispatch_count,
        parent_run_id=run.parent_run_id or "",
        root_run_id=run.root_run_id or run.run_id,
        hook_secret=claimed.hook_secret,
        continues_lease=claimed.continues_lease,
    )


def outgoing_to_proto(batch: list[Outgoing]) -> worker_service_pb2.PollTaskResponse:
    """Everything queued for a worker, as one stream message."""
    response = worker_service_pb2.PollTaskResponse()
    for item in batch:
        if isinstance(item, CommandResult):
            result = response.results.add(
                command_id=item.command_id,
                status=COMMAND_STATUS_TO_PROTO[item.status],
                message=item.message,
            )
            if item.recorded_step is not None:
                result.recorded_step.CopyFrom(step_to_proto(item.recorded_step))
        elif isinstance(item, Cancellation):
            response.cancellations.add(
                run_id=item.run_id, lease_id=item.lease_id, reason=item.reason
            )
        else:
            response.tasks.append(task_to_proto(item))
    return response


def _payload_in(payload: types_pb2.Payload) -> PayloadIn:
    return PayloadIn(json=payload.json, encoding=payload.encoding)


def _wait_from_proto(wait: worker_service_pb2.WaitCondition) -> WaitSpec:
    """A WaitCondition to a WaitSpec. A condition this server does not know
    becomes a timer without a time, which the engine rejects as INVALID."""
    if wait.WhichOneof("condition") == "hook":
        return WaitSpec(wait.wait_key, WaitKind.HOOK)
    if wait.WhichOneof("condition") == "event":
        event = wait.event
        since = event.since.ToMilliseconds() if wait.event.HasField("since") else None
        return WaitSpec(
            wait.wait_key,
            WaitKind.EVENT,
            target=event.name,
            match_json=event.match_json or None,
            since_time=since,
        )
    if wait.WhichOneof("condition") == "child":
        return WaitSpec(wait.wait_key, WaitKind.CHILD, target=wait.child.run_id)
    if wait.WhichOneof("condition") == "signal":
        return WaitSpec(wait.wait_key, WaitKind.SIGNAL, target=wait.signal.name)
    if wait.WhichOneof("condition") == "timer":
        fire = wait.timer.fire_time  # rounded up: a timer never fires early
        fire_ms = fire.seconds * 1000 + (fire.nanos + 999_999) // 1_000_000
        return WaitSpec(wait.wait_key, WaitKind.TIMER, fire_ms)
    return WaitSpec(wait.wait_key, WaitKind.TIMER, None)


def command_from_proto(msg: worker_service_pb2.WorkerCommand) -> Command:
    """A WorkerCommand to the engine's Command (action None when unset)."""
    kind = msg.WhichOneof("command")
    action: Action | None = None
    if kind == "record_step":
        step = msg.record_step.step
        outcome = step.WhichOneof("outcome")
        action = RecordStep(
            step=StepRow(
                step_key=step.step_key,
                attempt=step.attempt or 1,
                error=error_from_proto(step.error) if outcome == "error" else None,
                start_time=millis(step.start_time, step.HasField("start_time")),
                end_time=millis(step.end_time, step.HasField("end_time")),
                attempt_only=step.attempt_only,
            ),
            result=_payload_in(step.result) if outcome != "error" else None,
        )
    elif kind == "complete_run":
        action = CompleteRun(_payload_in(msg.complete_run.result))
    elif kind == "fail_run":
        action = FailRun(error_from_proto(msg.fail_run.error))
    elif kind == "release_run":
        action = ReleaseRun(msg.release_run.reason)
    elif kind == "record_event":
        event = msg.record_event
        action = RecordEvent(event.entry_key, event.name, _payload_in(event.payload))
    elif kind == "suspend_run":
        action = SuspendRun(tuple(_wait_from_proto(w) for w in msg.suspend_run.waits))
    elif kind == "start_step":
        start = msg.start_step
        action = StartStep(start.step_key, start.attempt or 1, start.timeout.ToMilliseconds())
    elif kind == "start_child":
        child = msg.start_child
        action = StartChild(
            child.child_key,
            child.workflow_name,
            child.workflow_version,
            _payload_in(child.input),
            child.detached,
        )
    elif kind == "hold_run":
        action = HoldRun(error_from_proto(msg.hold_run.error))
    return Command(msg.command_id, msg.run_id, msg.lease_id, action)


def workflow_limits(
    hello: worker_service_pb2.WorkerHello,
) -> dict[tuple[str, str], WorkflowLimits]:
    """The execution timeout and journal limit each registered version declares."""
    return {
        (w.name, w.version): WorkflowLimits(
            execution_timeout_ms=(
                w.execution_timeout.ToMilliseconds() if w.HasField("execution_timeout") else None
            ),
            max_entries=w.max_entries or None,
        )
        for w in hello.workflows
    }
