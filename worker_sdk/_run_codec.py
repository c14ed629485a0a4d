"""Runs between the wire and the SDK: ``stepd.v1.Run`` to ``RunInfo``, statuses both
ways, and datetimes to protobuf timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from stepd._runs import RunInfo, RunStatus
from stepd._serde import loads, payload_text
from stepd.errors import StepdError
from stepd.v1 import types_pb2

_FROM_PROTO: dict[types_pb2.RunStatus.ValueType, RunStatus] = {
    types_pb2.RUN_STATUS_PENDING: RunStatus.PENDING,
    types_pb2.RUN_STATUS_RUNNING: RunStatus.RUNNING,
    types_pb2.RUN_STATUS_SUSPENDED: RunStatus.SUSPENDED,
    types_pb2.RUN_STATUS_COMPLETED: RunStatus.COMPLETED,
    types_pb2.RUN_STATUS_FAILED: RunStatus.FAILED,
    types_pb2.RUN_STATUS_CANCELLED: RunStatus.CANCELLED,
}
_TO_PROTO: dict[RunStatus, types_pb2.RunStatus.ValueType] = {
    status: number for number, status in _FROM_PROTO.items()
}


def status_to_proto(status: RunStatus | str) -> types_pb2.RunStatus.ValueType:
    """Return the wire enum value of a status (a RunStatus or its lower-case name)."""
    try:
        return _TO_PROTO[RunStatus(status)]
    except ValueError:
        raise ValueError(
            f"unknown run status {status!r}; expected one of {', '.join(RunStatus)}"
        ) from None


def status_from_proto(value: types_pb2.RunStatus.ValueType) -> RunStatus:
    """Decode a wire status; StepdError for one this SDK does not know."""
    status = _FROM_PROTO.get(value)
    if status is None:
        raise StepdError(f"unknown run status {value}")
    return status


def run_info(run: types_pb2.Run) -> RunInfo:
    """Decode a ``stepd.v1.Run``."""
    status = _FROM_PROTO.get(run.status)
    if status is None:
        raise StepdError(f"run {run.run_id} has an unknown status {run.status}")
    has_error = run.HasField("error") and bool(run.error.type or run.error.message)
    reason = None
    if run.failure_reason != types_pb2.FAILURE_REASON_UNSPECIFIED:
        name = types_pb2.FailureReason.Name(run.failure_reason)
        reason = name.removeprefix("FAILURE_REASON_").lower()
    return RunInfo(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=status,
        input=loads(payload_text(run.input)),
        result=loads(payload_text(run.result)) if status is RunStatus.COMPLETED else None,
        error_type=run.error.type if has_error else None,
        error_message=run.error.message if has_error else None,
        error_traceback=run.error.traceback if has_error else None,
        parent_run_id=run.parent_run_id or None,
        create_time=_time(run, "create_time"),
        start_time=_time(run, "start_time"),
        end_time=_time(run, "end_time"),
        dispatch_count=run.dispatch_count,
        failure_reason=reason,
        cancel_reason=run.cancel_reason or None,
        error_step_key=(run.error.step_key or None) if has_error else None,
        error_attempt=(run.error.attempt or None) if has_error else None,
        deadline=_time(run, "deadline"),
        execution_deadline=_time(run, "execution_deadline"),
        scheduled_start_time=_time(run, "scheduled_start_time"),
        schedule_id=run.schedule_id or None,
        schedule_time=_time(run, "schedule_time"),
        root_run_id=run.root_run_id or None,
        progress=loads(payload_text(run.progress)) if run.HasField("progress") else None,
        idempotency_key=run.idempotency_key or None,
        detached=run.detached,
        held_error=run.held_error.message if run.HasField("held_error") else None,
        concurrency_key=run.concurrency_key if run.concurrency_limit else None,
        priority=run.priority,
        debounce_key=run.debounce_key or None,
        waiting_reason=run.waiting_reason,
        forked_from_run_id=run.forked_from_run_id or None,
        forked_from_step_key=run.forked_from_step_key or None,
        retry_count=run.retry_count,
    )


def _time(run: types_pb2.Run, field: str) -> datetime | None:
    if not run.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(run, field)
    return stamp.ToDatetime(tzinfo=UTC)


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """Encode an aware datetime (naive ones are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
