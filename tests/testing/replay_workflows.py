"""The workflow whose histories tests/testing/test_replay.py exports from a real server
(served by ``stepd-worker tests.testing.replay_workflows``) and replays."""

from __future__ import annotations

from typing import Any

from stepd import RetryPolicy, WorkflowContext, step, workflow

_FAILED: set[int] = set()  # orders whose reservation failed once (in this worker)


@step(retry=RetryPolicy(max_attempts=3, delay=0.05, backoff="constant"))
async def reserve(order: int) -> str:
    """Fails once per order, then succeeds: the history holds a retried attempt."""
    if order not in _FAILED:
        _FAILED.add(order)
        raise RuntimeError("the stock service is busy")
    return f"reserved-{order}"


@step
async def charge(order: int, approver: str) -> str:
    return f"charged-{order}-by-{approver}"


@workflow(name="replayed_order")
async def order(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    reserved = await reserve(n)
    ctx.log("reserved", order=n)
    day = ctx.now().date().isoformat()
    approval = await ctx.wait_for_signal("approve", timeout=3600)
    charged = await charge(n, approval["by"])
    return {"reserved": reserved, "charged": charged, "day": day}
