"""Expense approval: a manager approves, a VP too above 1000, each within a deadline.

People take days to answer, so the workflow waits for them durably: while it
waits for a decision the run is suspended (no worker holds it) and survives
restarts; a decision is a *signal* sent to the run
(``client.signal(run_id, "manager_decision", Decision(...))``). Every external
call is simulated, so the example runs anywhere. Serve it with
``stepd-worker examples.expense_approval``, or run this file against a server
(``stepd serve``; ``STEPD_ADDRESS`` picks another one) to see one expense go
through.

The flow:

1. ``notify`` asks the employee's manager to decide, and the run waits for the
   ``manager_decision`` signal, at most ``manager_timeout`` seconds (3 days).
2. A rejection, or no decision in time, ends the run with an outcome that says
   so (``rejected`` / ``timed_out``), after telling the employee.
3. Above ``VP_THRESHOLD`` the VP decides the same way (``vp_decision``).
4. Once approved, ``pay_out`` pays the employee, who is told.

Each step of the way is written to the run's history with ``ctx.log``
(``client.list_run_events(run_id)`` shows it).
"""

import asyncio
import hashlib
import os
from typing import Literal

from pydantic import BaseModel, Field

from stepd import Client, Worker, WorkflowContext, step, workflow
from stepd.errors import WaitTimeoutError

#: Expenses above this amount need a VP's approval as well.
VP_THRESHOLD = 1000
THREE_DAYS = 3 * 24 * 3600.0


class Expense(BaseModel):
    """The workflow's input."""

    expense_id: str
    employee: str
    amount: float = Field(gt=0)
    description: str
    manager_timeout: float = Field(default=THREE_DAYS, gt=0)
    """Seconds the manager has to decide."""
    vp_timeout: float = Field(default=THREE_DAYS, gt=0)
    """Seconds the VP has to decide."""


class Decision(BaseModel):
    """The payload of a ``manager_decision`` or ``vp_decision`` signal."""

    approved: bool
    by: str
    comment: str = ""


class Outcome(BaseModel):
    """The workflow's result."""

    expense_id: str
    status: Literal["paid", "rejected", "timed_out"]
    approved_by: list[str]
    message: str
    payout_id: str | None = None


@step
async def notify(recipient: str, message: str) -> str:
    """Send a message (simulated); return its id."""
    return "msg-" + hashlib.sha256(f"{recipient}:{message}".encode()).hexdigest()[:10]


@step
async def pay_out(expense: Expense) -> str:
    """Pay the employee (simulated; idempotent by expense id); return the payout id."""
    return "payout-" + hashlib.sha256(expense.expense_id.encode()).hexdigest()[:10]


async def decide(
    ctx: WorkflowContext, expense: Expense, role: Literal["manager", "vp"], seconds: float
) -> Decision | None:
    """Ask ``role`` to decide; return the decision, or None when none came within
    ``seconds``."""
    await notify(
        f"{role}-of:{expense.employee}",
        f"please approve {expense.expense_id}: {expense.amount:.2f} for {expense.description}",
    )
    ctx.log(f"waiting for the {role}", expense_id=expense.expense_id, seconds=seconds)
    try:
        decision = await ctx.wait_for_signal(f"{role}_decision", timeout=seconds, type=Decision)
    except WaitTimeoutError:
        ctx.log(f"the {role} did not decide in time", expense_id=expense.expense_id)
        return None
    ctx.log(f"the {role} decided", approved=decision.approved, by=decision.by)
    return decision


@workflow(name="expense_approval")
async def expense_approval(ctx: WorkflowContext, expense: Expense) -> Outcome:
    """Approve an expense (manager, then VP above the threshold) and pay it out."""
    approvers: list[tuple[Literal["manager", "vp"], float]] = [("manager", expense.manager_timeout)]
    if expense.amount > VP_THRESHOLD:
        approvers.append(("vp", expense.vp_timeout))
    approved_by: list[str] = []
    for role, timeout in approvers:
        decision = await decide(ctx, expense, role, timeout)
        if decision is None:
            message = f"no decision from the {role} within {timeout:g} s"
            await notify(expense.employee, f"{expense.expense_id} expired: {message}")
            return Outcome(
                expense_id=expense.expense_id,
                status="timed_out",
                approved_by=approved_by,
                message=message,
            )
        if not decision.approved:
            message = f"rejected by {decision.by} ({role}): {decision.comment or 'no reason'}"
            await notify(expense.employee, f"{expense.expense_id} {message}")
            return Outcome(
                expense_id=expense.expense_id,
                status="rejected",
                approved_by=approved_by,
                message=message,
            )
        approved_by.append(decision.by)
    payout_id = await pay_out(expense)
    await notify(expense.employee, f"{expense.expense_id} paid: {payout_id}")
    return Outcome(
        expense_id=expense.expense_id,
        status="paid",
        approved_by=approved_by,
        message=f"approved by {', '.join(approved_by)} and paid",
        payout_id=payout_id,
    )


async def main() -> None:
    """Serve the workflow, submit one expense, approve it twice, print the outcome."""
    address = os.environ.get("STEPD_ADDRESS", "127.0.0.1:50051")
    async with Worker(address, workflows=[expense_approval]) as worker, Client(address) as client:
        serving = asyncio.create_task(worker.run())
        expense = Expense(
            expense_id="exp-1", employee="ada", amount=1800, description="conference trip"
        )
        handle = await client.trigger(expense_approval, expense)
        await handle.signal("manager_decision", Decision(approved=True, by="grace"))
        await handle.signal("vp_decision", Decision(approved=True, by="linus"))
        outcome = await handle.result()
        print(outcome.status, "-", outcome.message)
        async for event in handle.events():
            if event.type == "custom":
                print("  log:", event.payload["message"])
        serving.cancel()


if __name__ == "__main__":
    asyncio.run(main())
