"""Document approval with escalation: the workflow docs/testing.md tests.

A reviewer has 48 hours to decide (the ``decision`` signal). Without an answer
the request is escalated to the reviewer's manager, who has 24 more hours;
without an answer from either, the request expires. The author is told how it
ended. Every external call is a step, so a test can replace it
(``env.mock_step``) and see how it was called: ``examples/test_approval.py``
tests all three paths, with their 72 hours of waiting, in well under a second.
Serve it with ``stepd-worker examples.approval``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from stepd.errors import WaitTimeoutError

REVIEW_TIME = timedelta(hours=48)
ESCALATION_TIME = timedelta(hours=24)


class Request(BaseModel):
    """The workflow's input."""

    document: str
    author: str
    reviewer: str
    manager: str


class Decision(BaseModel):
    """The payload of the ``decision`` signal."""

    approved: bool
    by: str
    comment: str = ""


class Outcome(BaseModel):
    """The workflow's result."""

    status: Literal["approved", "rejected", "expired"]
    decided_by: str | None
    escalated: bool


@step
async def ask_for_review(reviewer: str, document: str) -> str:
    """Ask someone to review the document (simulated); return the message id."""
    return f"review-request:{reviewer}:{document}"


@step
async def escalate(manager: str, document: str) -> str:
    """Tell the manager that the review is overdue (simulated)."""
    return f"escalation:{manager}:{document}"


@step
async def tell_author(author: str, message: str) -> str:
    """Tell the author how the request ended (simulated)."""
    return f"message:{author}:{message}"


@workflow(name="document_approval")
async def document_approval(ctx: WorkflowContext, request: Request) -> Outcome:
    """Get a decision on a document: from the reviewer, else from their manager."""
    await ask_for_review(request.reviewer, request.document)
    escalated = False
    try:
        decision = await ctx.wait_for_signal("decision", timeout=REVIEW_TIME, type=Decision)
    except WaitTimeoutError:
        escalated = True
        await escalate(request.manager, request.document)
        try:
            decision = await ctx.wait_for_signal("decision", timeout=ESCALATION_TIME, type=Decision)
        except WaitTimeoutError:
            await tell_author(request.author, f"{request.document}: expired unreviewed")
            return Outcome(status="expired", decided_by=None, escalated=True)
    status: Literal["approved", "rejected"] = "approved" if decision.approved else "rejected"
    await tell_author(request.author, f"{request.document}: {status} by {decision.by}")
    return Outcome(status=status, decided_by=decision.by, escalated=escalated)
