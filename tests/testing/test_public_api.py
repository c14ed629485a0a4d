"""The pinned public surface of stepd.testing."""

from __future__ import annotations

import dataclasses
import inspect

import stepd.testing
from stepd.testing import ReplayResult, RunHistory, WorkflowEnvironment

PINNED = ["WorkflowEnvironment", "RunHistory", "ReplayResult", "replay"]

ENVIRONMENT = [
    "start",
    "close",
    "client",
    "address",
    "now",
    "sleep",
    "mock_step",
    "mock_workflow",
    "signal",
    "publish_event",
    "execute_hook",
    "history",
]


def _public(cls: type) -> list[str]:
    return [name for name in vars(cls) if not name.startswith("_")]


def test_all_is_pinned_and_documented() -> None:
    assert sorted(stepd.testing.__all__) == sorted(PINNED)
    assert inspect.getdoc(stepd.testing)
    for name in PINNED:
        assert inspect.getdoc(getattr(stepd.testing, name)), name


def test_the_environment_has_a_small_documented_surface() -> None:
    assert sorted(_public(WorkflowEnvironment)) == sorted(ENVIRONMENT)
    for name in ENVIRONMENT:
        assert inspect.getdoc(getattr(WorkflowEnvironment, name)), name
    parameters = inspect.signature(WorkflowEnvironment).parameters
    assert list(parameters) == ["workflows", "time_skipping", "start_time"]


def test_history_and_replay_result_fields() -> None:
    assert [f.name for f in dataclasses.fields(RunHistory)] == [
        "run_id",
        "workflow_name",
        "workflow_version",
        "status",
        "input",
        "events",
        "result",
        "error_type",
        "error_message",
        "failure_reason",
    ]
    assert sorted(_public(RunHistory)) == sorted(
        ["fetch", "ended_by_its_code", "to_json", "from_json", "save", "load"]
        + [f.name for f in dataclasses.fields(RunHistory)]
    )
    assert [f.name for f in dataclasses.fields(ReplayResult)] == [
        "run_id",
        "workflow_name",
        "error",
        "next",
    ]
    assert sorted(_public(ReplayResult)) == sorted(
        ["ok", "check", "run_id", "workflow_name", "error", "next"]
    )
    for name in ("fetch", "to_json", "from_json", "save", "load", "ended_by_its_code"):
        assert inspect.getdoc(getattr(RunHistory, name)), name
