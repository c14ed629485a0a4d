"""The pinned public surface of stepd."""

from __future__ import annotations

import inspect

import stepd
from stepd import errors

PINNED = [
    "workflow",
    "step",
    "Workflow",
    "Step",
    "WorkflowContext",
    "ChildHandle",
    "Worker",
    "Client",
    "Concurrency",
    "Debounce",
    "Hook",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "RunStatus",
    "PublishedEvent",
    "Rate",
    "StepdError",
    "RunFailedError",
    "RunCancelledError",
    "NotFoundError",
]


def test_all_is_pinned() -> None:
    assert sorted(stepd.__all__) == sorted(PINNED)
    for name in PINNED:
        assert hasattr(stepd, name), name


def test_public_names_are_documented() -> None:
    for name in PINNED:
        assert inspect.getdoc(getattr(stepd, name)), name


def test_run_status_values() -> None:
    assert [s.value for s in stepd.RunStatus] == [
        "pending",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
    ]
    assert str(stepd.RunStatus.COMPLETED) == "completed"
    assert stepd.RunStatus("failed").is_terminal
    assert not stepd.RunStatus.SUSPENDED.is_terminal


def test_every_error_derives_from_stepd_error() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, stepd.StepdError), name
        assert name in (errors.__doc__ or ""), f"{name} missing from the hierarchy docstring"


def test_internal_signals_escape_except_exception() -> None:
    from stepd._control import CommandRejected, LeaseLost, RunAbandoned, RunHeld, RunSuspended

    for cls in (RunAbandoned, LeaseLost, CommandRejected, RunSuspended, RunHeld):
        assert issubclass(cls, BaseException)
        assert not issubclass(cls, Exception)


def test_py_typed_is_shipped() -> None:
    from pathlib import Path

    assert (Path(stepd.__file__).parent / "py.typed").exists()


def test_history_module_exports_run_event_types() -> None:
    from stepd import history

    assert sorted(history.__all__) == ["RunEvent", "RunEventType"]
    for name in history.__all__:
        assert inspect.getdoc(getattr(history, name)), name
    assert [t.value for t in history.RunEventType] == [
        "triggered",
        "dispatched",
        "step_completed",
        "step_failed",
        "suspended",
        "wait_met",
        "signal_received",
        "released",
        "completed",
        "failed",
        "cancelled",
        "custom",
        "held",
        "child_started",
        "progress",
        "retried",
        "forked",
        "forked_from",
        "unknown",
    ]


def test_operations_module_exports_what_the_operator_calls_return() -> None:
    from stepd import operations

    assert sorted(operations.__all__) == ["BulkResult", "WorkerInfo"]
    for name in operations.__all__:
        assert inspect.getdoc(getattr(operations, name)), name
    for method in ("retry", "fork", "delete_run", "cancel_runs", "retry_runs", "list_workers"):
        assert inspect.getdoc(getattr(stepd.Client, method)), method


def test_wait_timeout_error_is_a_timeout_error() -> None:
    assert issubclass(errors.WaitTimeoutError, TimeoutError)
    assert issubclass(errors.WaitTimeoutError, stepd.StepdError)
