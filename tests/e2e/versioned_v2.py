"""Version 2 of ``e2e.versioned`` and ``e2e.changing`` (served alone by one worker)."""

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import mark


@workflow(name="e2e.versioned", version="2")
async def versioned(ctx: WorkflowContext) -> str:
    return f"code 2 ran version {ctx.version}"


@step
async def first(tag: str) -> str:
    mark(tag, "first")
    return "a"


@step
async def other(tag: str) -> str:
    mark(tag, "other")
    return "x"


@workflow(name="e2e.changing")
async def changing(ctx: WorkflowContext, tag: str) -> str:
    """Changed under the same version: another step where ``second`` was recorded."""
    done = [await first(tag), await other(tag)]
    await ctx.wait_for_signal("go")
    return ",".join(done)
