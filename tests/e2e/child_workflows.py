"""Workflows with child runs, served by ``stepd-worker tests.e2e.child_workflows``."""

import asyncio
from typing import Any

from stepd import WorkflowContext, step, workflow
from stepd.errors import ChildFailedError
from tests.e2e.workflows import Job, mark, wait_until_released


@step
async def double_it(value: int) -> int:
    return value * 2


@workflow(name="e2e.child.double")
async def double(ctx: WorkflowContext, value: int) -> int:
    return await double_it(value)


@workflow(name="e2e.child.fail")
async def fail(ctx: WorkflowContext, message: str) -> int:
    raise ValueError(message)


@workflow(name="e2e.child.wait_go")
async def wait_go(ctx: WorkflowContext, value: int) -> int:
    await ctx.wait_for_signal("go")
    return value


@workflow(name="e2e.child.parent_one")
async def parent_one(ctx: WorkflowContext, value: int) -> int:
    return await ctx.child(double, value) + 1


@workflow(name="e2e.child.parent_catch")
async def parent_catch(ctx: WorkflowContext, mode: str) -> str:
    try:
        await ctx.child(fail, "card declined")
    except ChildFailedError as exc:
        if mode == "reraise":
            raise
        return f"{exc.status} {exc.error_type}: {exc.error_message} ({exc.run_id})"
    return "not reached"


@workflow(name="e2e.child.fan_out")
async def fan_out(ctx: WorkflowContext, width: int) -> list[int]:
    return list(await asyncio.gather(*(ctx.child(double, i) for i in range(width))))


@step
async def block(tag: str) -> str:
    mark(tag, "block")
    await wait_until_released(tag)
    return "released"


@workflow(name="e2e.child.crash_parent")
async def crash_parent(ctx: WorkflowContext, job: Job) -> int:
    handles = [await ctx.start_child(wait_go, i) for i in range(job.value)]
    await block(job.tag)  # the worker is killed here, with the children started
    return sum(await asyncio.gather(*(h.result() for h in handles)))


@workflow(name="e2e.child.middle")
async def middle(ctx: WorkflowContext) -> int:
    return await ctx.child(wait_go, 7)


@workflow(name="e2e.child.cascade")
async def cascade(ctx: WorkflowContext) -> dict[str, Any]:
    attached = await ctx.start_child(middle)
    detached = await ctx.start_child(wait_go, 5, detached=True)
    return {"attached": await attached.result(), "detached": await detached.result()}
