"""Conversions between domain objects and table rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepd.server.domain import (
    NO_TRACE,
    ErrorDetails,
    FailureReason,
    NewRun,
    RunRecord,
    RunStatus,
    StepRow,
    TraceContext,
)


def error_columns(error: ErrorDetails | None) -> dict[str, Any]:
    """Return the ``error_*`` column values for an error (all None for no error)."""
    if error is None:
        return {
            "error_type": None,
            "error_message": None,
            "error_traceback": None,
            "error_step_key": None,
            "error_attempt": None,
        }
    return {
        "error_type": error.type,
        "error_message": error.message,
        "error_traceback": error.traceback,
        "error_step_key": error.step_key,
        "error_attempt": error.attempt,
    }


def error_from_row(row: Mapping[Any, Any]) -> ErrorDetails | None:
    """Read the ``error_*`` columns of a row; None when no error is stored."""
    if row["error_type"] is None:
        return None
    return ErrorDetails(
        type=row["error_type"],
        message=row["error_message"] or "",
        traceback=row["error_traceback"] or "",
        step_key=row["error_step_key"] or "",
        attempt=row["error_attempt"] or 0,
    )


def new_run_values(new: NewRun) -> dict[str, Any]:
    """Column values of a freshly created PENDING run."""
    return {
        "run_id": new.run_id,
        "workflow_name": new.workflow_name,
        "workflow_version": new.workflow_version,
        "status": RunStatus.PENDING.value,
        "input_json": new.input_json,
        "idempotency_key": new.idempotency_key,
        "parent_run_id": new.parent_run_id,
        "root_run_id": new.root_run_id,
        "create_time": new.create_time,
        "update_time": new.create_time,
        "deadline": new.deadline,
        "expire_time": new.deadline,
        "start_time_not_before": new.start_time_not_before,
        "schedule_id": new.schedule_id,
        "schedule_time": new.schedule_time,
        "dispatch_count": 0,
        "lease_id": 0,
        "detached": 1 if new.detached else None,
        "trace_parent": new.trace.parent or None,
        "trace_state": new.trace.state or None,
        "priority": new.priority or None,
    }


def run_from_row(row: Mapping[Any, Any]) -> RunRecord:
    """Build a RunRecord from a ``runs`` row."""
    reason = row["failure_reason"]
    return RunRecord(
        run_id=row["run_id"],
        seq=row["seq"],
        workflow_name=row["workflow_name"],
        workflow_version=row["workflow_version"],
        status=RunStatus(row["status"]),
        input_json=row["input_json"],
        result_json=row["result_json"],
        error=error_from_row(row),
        failure_reason=FailureReason(reason) if reason is not None else None,
        parent_run_id=row["parent_run_id"],
        root_run_id=row["root_run_id"],
        idempotency_key=row["idempotency_key"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        deadline=row["deadline"],
        start_time_not_before=row["start_time_not_before"],
        dispatch_count=row["dispatch_count"],
        lease_id=row["lease_id"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        cancel_reason=row["cancel_reason"],
        execution_deadline=row["execution_deadline"],
        expire_time=row["expire_time"],
        schedule_id=row["schedule_id"],
        schedule_time=row["schedule_time"],
        held_error=_held_error(row),
        detached=bool(row["detached"]),
        has_children=bool(row["has_children"]),
        concurrency_name=row["concurrency_name"],
        concurrency_key=row["concurrency_key"],
        admitted=row["admitted"] != 0,
        priority=row["priority"] or 0,
        rate_limit=row["rate_limit"],
        rate_key=row["rate_key"],
        debounce_key=row["debounce_key"],
        progress_json=row["progress_json"],
        trace=_trace(row),
        forked_from_run_id=row["forked_from_run_id"],
        forked_from_step_key=row["forked_from_step_key"],
        retry_count=row["retry_count"] or 0,
    )


def _trace(row: Mapping[Any, Any]) -> TraceContext:
    parent = row["trace_parent"]
    if parent is None:
        return NO_TRACE
    return TraceContext(parent, row["trace_state"] or "")


def _held_error(row: Mapping[Any, Any]) -> ErrorDetails | None:
    if row["held_error_type"] is None:
        return None
    return ErrorDetails(row["held_error_type"], row["held_error_message"] or "")


def step_values(run_id: str, step: StepRow, record_time: int) -> dict[str, Any]:
    """Column values of a new ``steps`` row (``sequence`` is assigned by the database)."""
    return {
        "run_id": run_id,
        "step_key": step.step_key,
        "attempt": step.attempt,
        "result_json": step.result_json,
        **error_columns(step.error),
        "start_time": step.start_time,
        "end_time": step.end_time,
        "record_time": record_time,
    }


def step_from_row(row: Mapping[Any, Any]) -> StepRow:
    """Build a StepRow from a ``steps`` row."""
    return StepRow(
        step_key=row["step_key"],
        attempt=row["attempt"],
        result_json=row["result_json"],
        error=error_from_row(row),
        start_time=row["start_time"],
        end_time=row["end_time"],
        sequence=row["sequence"],
    )


def attempt_from_row(row: Mapping[Any, Any]) -> StepRow:
    """Build a StepRow (``attempt_only``) from a ``step_attempts`` row."""
    return StepRow(
        step_key=row["step_key"],
        attempt=row["attempt"],
        error=error_from_row(row),
        start_time=row["start_time"],
        end_time=row["end_time"],
        sequence=row["sequence"],
        attempt_only=True,
    )
