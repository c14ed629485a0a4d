"""Workflows the stepd.testing tests serve in a WorkflowEnvironment."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from stepd import RetryPolicy, WorkflowContext, step, workflow
from stepd.errors import WaitTimeoutError

#: Set by a step body that must never run in a test that mocks it.
BODIES_RUN: list[str] = []


@step
async def charge(customer: str, cents: int, *, currency: str = "EUR") -> str:
    """A step a test mocks: its body must not run there."""
    BODIES_RUN.append(f"charge {customer} {cents} {currency}")
    return f"real-charge-{customer}"


@step
async def notify(recipient: str, message: str) -> str:
    return f"sent to {recipient}: {message}"


@step
async def warm_up(seconds: float) -> None:
    """Real time a run spends before its clock reading (the environment's clock
    runs at real pace while a step runs)."""
    await asyncio.sleep(seconds)


@workflow
async def week_then_signal(
    ctx: WorkflowContext, warm_up_seconds: float | None = None
) -> dict[str, Any]:
    """A 7-day sleep, then at most 48 hours for a signal."""
    if warm_up_seconds:
        await warm_up(warm_up_seconds)
    started = ctx.now()
    await ctx.sleep(timedelta(days=7))
    slept = ctx.now()
    try:
        decision = await ctx.wait_for_signal("decision", timeout=timedelta(hours=48))
    except WaitTimeoutError:
        decision = None
    ended = ctx.now()
    return {
        "decision": decision,
        "slept_hours": (slept - started) / timedelta(hours=1),
        "total_hours": (ended - started) / timedelta(hours=1),
    }


@workflow
async def billing(ctx: WorkflowContext, customer: str) -> str:
    receipt = await charge(customer, 1250, currency="USD")
    await notify(customer, receipt)
    return receipt


@step(retry=RetryPolicy(max_attempts=4, delay=timedelta(hours=1), backoff="constant"))
async def flaky() -> str:
    return "real"


@workflow
async def retries_for_hours(ctx: WorkflowContext) -> dict[str, Any]:
    """A step retried with hour-long backoffs."""
    started = ctx.now()
    outcome = await flaky()
    return {"outcome": outcome, "hours": (ctx.now() - started) / timedelta(hours=1)}


@workflow
async def child_report(ctx: WorkflowContext, n: int) -> str:
    return f"real report {n}"


@workflow
async def parent(ctx: WorkflowContext) -> list[str]:
    first = await ctx.child(child_report, 1)
    second = await ctx.child(child_report, 2)
    return [first, second]


@workflow
async def hooked(ctx: WorkflowContext) -> Any:
    hook = ctx.create_hook()
    await notify("approver", hook.token)
    return await ctx.wait_for_hook(hook, timeout=timedelta(days=2))


@workflow
async def waits_for_event(ctx: WorkflowContext, order: int) -> Any:
    return await ctx.wait_for_event("order.paid", match={"order": order}, timeout=3600)


@workflow
async def calls_notify_wrongly(ctx: WorkflowContext) -> str:
    return await notify("only the recipient")  # type: ignore[call-arg]


@workflow
async def sleeps_three_days(ctx: WorkflowContext) -> str:
    await ctx.sleep(timedelta(days=3))
    return "woke"


@workflow
async def quick(ctx: WorkflowContext) -> str:
    return ctx.now().isoformat()


@workflow(schedule="0 9 * * *")
async def every_morning(ctx: WorkflowContext) -> str:
    return ctx.now().isoformat()
