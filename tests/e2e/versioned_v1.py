"""Version 1 of ``e2e.versioned`` and ``e2e.changing`` (served alone by one worker)."""

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import mark


@workflow(name="e2e.versioned", version="1")
async def versioned(ctx: WorkflowContext) -> str:
    return f"code 1 ran version {ctx.version}"


@step
async def first(tag: str) -> str:
    mark(tag, "first")
    return "a"


@step
async def second(tag: str) -> str:
    mark(tag, "second")
    return "b"


@step
async def third(tag: str) -> str:
    mark(tag, "third")
    return "c"


@workflow(name="e2e.changing")
async def changing(ctx: WorkflowContext, tag: str) -> str:
    """The original code: first, second, a signal, third."""
    done = [await first(tag), await second(tag)]
    await ctx.wait_for_signal("go")
    done.append(await third(tag))
    return ",".join(done)


@step
async def remember(values: list[str]) -> list[str]:
    return values


@workflow(name="e2e.deterministic")
async def deterministic(ctx: WorkflowContext) -> dict[str, list[str]]:
    """Values read before a sleep (so the end is a replay), and what a step saw of them."""
    values = [ctx.now().isoformat(), str(ctx.uuid()), repr(ctx.random())]
    seen = await remember(values)
    await ctx.sleep(0.05)
    return {"replayed": values, "first": seen, "after": [ctx.now().isoformat()]}
