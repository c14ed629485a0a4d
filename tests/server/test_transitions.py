"""The run state machine table."""

import pytest

from stepd.server.domain import RunStatus
from stepd.server.engine import transitions
from stepd.server.engine.transitions import RunEvent


def test_terminal_statuses_have_no_way_out_but_an_operator_s_retry() -> None:
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        for event in RunEvent:
            if event is RunEvent.RETRY and status is not RunStatus.COMPLETED:
                continue
            assert not transitions.allowed(status, event)


def test_only_failed_and_cancelled_runs_can_be_retried() -> None:
    assert transitions.sources(RunEvent.RETRY) == {RunStatus.FAILED, RunStatus.CANCELLED}
    assert transitions.target(RunEvent.RETRY) is RunStatus.PENDING


@pytest.mark.parametrize(
    ("status", "event", "expected"),
    [
        (RunStatus.PENDING, RunEvent.DISPATCH, RunStatus.RUNNING),
        (RunStatus.RUNNING, RunEvent.COMPLETE, RunStatus.COMPLETED),
        (RunStatus.RUNNING, RunEvent.FAIL, RunStatus.FAILED),
        (RunStatus.RUNNING, RunEvent.RELEASE, RunStatus.PENDING),
        (RunStatus.RUNNING, RunEvent.SUSPEND, RunStatus.SUSPENDED),
        (RunStatus.SUSPENDED, RunEvent.WAKE, RunStatus.PENDING),
        (RunStatus.SUSPENDED, RunEvent.CANCEL, RunStatus.CANCELLED),
    ],
)
def test_allowed_moves(status: RunStatus, event: RunEvent, expected: RunStatus) -> None:
    assert transitions.allowed(status, event)
    assert status in transitions.sources(event)
    assert transitions.target(event) is expected


def test_a_pending_run_cannot_complete() -> None:
    assert not transitions.allowed(RunStatus.PENDING, RunEvent.COMPLETE)
    assert RunStatus.PENDING not in transitions.sources(RunEvent.COMPLETE)


def test_a_move_is_the_table_s_sources_and_target_of_its_event() -> None:
    for event in RunEvent:
        move = transitions.move(event)
        assert move.sources == transitions.sources(event)
        assert move.target is transitions.target(event)
        assert all(transitions.allowed(status, event) for status in move.sources)
