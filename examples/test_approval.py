"""Tests of examples/approval.py with stepd.testing (run: pytest examples/test_approval.py)."""

from datetime import timedelta
from typing import Any

import pytest

from examples.approval import (
    Decision,
    Outcome,
    Request,
    document_approval,
    escalate,
    tell_author,
)
from stepd import Workflow
from stepd.testing import WorkflowEnvironment

REQUEST = Request(document="Q3 budget", author="ada", reviewer="grace", manager="linus")


@pytest.fixture
def stepd_workflows() -> list[Workflow[Any, Any]]:
    return [document_approval]  # what the stepd_env fixture serves


async def test_the_reviewer_approves_in_time(stepd_env: WorkflowEnvironment) -> None:
    escalated = stepd_env.mock_step(escalate, "sent")
    run = await stepd_env.client.trigger(document_approval, REQUEST)
    await stepd_env.sleep(timedelta(hours=5))  # the reviewer takes five hours
    await run.signal("decision", Decision(approved=True, by="grace"))
    assert await run.result() == Outcome(status="approved", decided_by="grace", escalated=False)
    escalated.assert_not_awaited()


async def test_after_48_hours_the_manager_decides(stepd_env: WorkflowEnvironment) -> None:
    escalated = stepd_env.mock_step(escalate, "sent")
    run = await stepd_env.client.trigger(document_approval, REQUEST)
    await stepd_env.sleep(timedelta(hours=49))  # past the reviewer's 48 hours
    escalated.assert_awaited_once_with("linus", "Q3 budget")
    await run.signal("decision", Decision(approved=False, by="linus", comment="too high"))
    assert await run.result() == Outcome(status="rejected", decided_by="linus", escalated=True)


async def test_without_any_answer_the_request_expires(stepd_env: WorkflowEnvironment) -> None:
    told = stepd_env.mock_step(tell_author, "sent")
    started = stepd_env.now()
    outcome = await stepd_env.client.execute(document_approval, REQUEST)  # skips 72 hours
    assert outcome == Outcome(status="expired", decided_by=None, escalated=True)
    told.assert_awaited_once_with("ada", "Q3 budget: expired unreviewed")
    assert stepd_env.now() - started >= timedelta(hours=72)
