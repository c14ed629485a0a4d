"""Workflows whose spans the trace tests read, served by
``stepd-worker tests.e2e.trace_workflows --otel``."""

from __future__ import annotations

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import Job, mark, wait_until_released


@step
async def first(value: int) -> int:
    return value + 1


@step
async def second(value: int) -> int:
    return value * 2


@step
async def third(value: int) -> int:
    return value - 3


@step
async def broken(value: int) -> int:
    raise ValueError(f"broken {value}")


@workflow(name="e2e.trace.steps")
async def steps(ctx: WorkflowContext, value: int) -> int:
    """Two steps, a wait for the signal "go" (the run suspends), one more step."""
    value = await second(await first(value))
    await ctx.wait_for_signal("go")
    return await third(value)


@workflow(name="e2e.trace.child")
async def child(ctx: WorkflowContext, value: int) -> int:
    return await first(value)


@workflow(name="e2e.trace.parent")
async def parent(ctx: WorkflowContext, value: int) -> int:
    return await ctx.child(child, await second(value))


@workflow(name="e2e.trace.fails")
async def fails(ctx: WorkflowContext, value: int) -> int:
    return await broken(value)


@step
async def block(tag: str) -> str:
    mark(tag, "block")
    await wait_until_released(tag)
    return "released"


@workflow(name="e2e.trace.crash")
async def crash(ctx: WorkflowContext, job: Job) -> str:
    """A step, then one that waits for the test (its worker is killed there)."""
    await first(job.value)
    return await block(job.tag)
