"""Workflows for sticky execution, served by ``stepd-worker tests.e2e.sticky_workflows``.

Each step body marks ``step N`` for its tag, so a test sees a body that ran
twice; ``unwound`` is marked when a run's coroutine unwinds at a wait (the
worker let its parked execution go).
"""

from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import mark


class Loop(BaseModel):
    """``count`` rounds of a step then a wait."""

    tag: str
    count: int
    seconds: float = 0.02
    #: Before this round, wait for the signal "resume" instead of sleeping (-1: never).
    pause_at: int = -1


@step
async def body(tag: str, index: int) -> int:
    mark(tag, f"step {index}")
    return index


@workflow(name="e2e.sticky.loop")
async def loop(ctx: WorkflowContext, job: Loop) -> int:
    """A step then a durable sleep, ``count`` times; returns the steps' sum."""
    total = 0
    try:
        for i in range(job.count):
            if i == job.pause_at:
                await ctx.wait_for_signal("resume")
            total += await body(job.tag, i)
            await ctx.sleep(job.seconds)
    finally:
        mark(job.tag, "unwound")
    return total


@workflow(name="e2e.sticky.signals")
async def signals(ctx: WorkflowContext, job: Loop) -> list[int]:
    """Wait for the signal "next" and run a step with its value, ``count`` times."""
    values = []
    for _ in range(job.count):
        value = await ctx.wait_for_signal("next", type=int)
        values.append(await body(job.tag, value))
    return values


@step
async def triple(value: int) -> int:
    return value * 3


@workflow(name="e2e.sticky.child")
async def child(ctx: WorkflowContext, value: int) -> int:
    return await triple(value)


@workflow(name="e2e.sticky.parent")
async def parent(ctx: WorkflowContext, job: Loop) -> list[int]:
    """Start a child and wait for it, then a step, ``count`` times."""
    results = []
    for i in range(job.count):
        results.append(await ctx.child(child, i))
        await body(job.tag, i)
    return results
