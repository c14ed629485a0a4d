"""The pinned public surface of worker_sdk."""

from __future__ import annotations

import inspect

import worker_sdk
from worker_sdk import errors

PINNED = [
    "workflow",
    "step",
    "WorkflowContext",
    "Worker",
    "Client",
    "Hook",
    "RetryPolicy",
    "RunHandle",
    "RunInfo",
    "RunStatus",
    "StepdError",
    "RunFailedError",
    "RunCancelledError",
    "NotFoundError",
]


def test_all_is_pinned() -> None:
    assert sorted(worker_sdk.__all__) == sorted(PINNED)
    for name in PINNED:
        assert hasattr(worker_sdk, name), name


def test_public_names_are_documented() -> None:
    for name in PINNED:
        assert inspect.getdoc(getattr(worker_sdk, name)), name


def test_run_status_values() -> None:
    assert [s.value for s in worker_sdk.RunStatus] == [
        "pending",
        "running",
        "suspended",
        "completed",
        "failed",
        "cancelled",
    ]
    assert str(worker_sdk.RunStatus.COMPLETED) == "completed"
    assert worker_sdk.RunStatus("failed").is_terminal
    assert not worker_sdk.RunStatus.SUSPENDED.is_terminal


def test_every_error_derives_from_stepd_error() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, worker_sdk.StepdError), name
        assert name in (errors.__doc__ or ""), f"{name} missing from the hierarchy docstring"


def test_internal_signals_escape_except_exception() -> None:
    from worker_sdk._replay import CommandRejected, LeaseLost, RunAbandoned, RunHeld, RunSuspended

    for cls in (RunAbandoned, LeaseLost, CommandRejected, RunSuspended, RunHeld):
        assert issubclass(cls, BaseException)
        assert not issubclass(cls, Exception)


def test_py_typed_is_shipped() -> None:
    from pathlib import Path

    assert (Path(worker_sdk.__file__).parent / "py.typed").exists()


def test_sdk_does_not_import_service() -> None:
    from pathlib import Path

    root = Path(worker_sdk.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import service" not in text and "from service" not in text, path


def test_history_module_exports_run_event_types() -> None:
    from worker_sdk import history

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
        "unknown",
    ]


def test_wait_timeout_error_is_a_timeout_error() -> None:
    assert issubclass(errors.WaitTimeoutError, TimeoutError)
    assert issubclass(errors.WaitTimeoutError, worker_sdk.StepdError)
