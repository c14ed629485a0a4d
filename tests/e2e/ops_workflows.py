"""Workflows the command-line and live-stream tests run in real worker processes.

Served by ``stepd-worker tests.e2e.ops_workflows``.
"""

from typing import Any

from stepd import WorkflowContext, step, workflow


@step
async def count(n: int) -> int:
    """A step that returns its input plus one."""
    return n + 1


@workflow(name="ops.progress")
async def progress(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    """Three steps, reporting progress after each, then waits for the signal "go"
    (so a test can watch it live) and returns what the signal carried."""
    total = 0
    for i in range(3):
        total = await count(total)
        ctx.set_progress({"done": i + 1, "of": 3})
    go = await ctx.wait_for_signal("go", timeout=600)
    ctx.set_progress("finished")
    return {"total": total, "go": go, "name": data.get("name")}


@workflow(name="ops.waits")
async def waits(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    """Waits at once for a timer, a signal (with a timeout), an event matching the
    input's order, a hook and a child; whichever comes first wins."""
    hook = ctx.create_hook()
    child = await ctx.start_child(waits_child, {"seconds": 3600})
    index, value = await ctx.first(
        ctx.sleep(3600),
        ctx.wait_for_signal("approve", timeout=7200),
        ctx.wait_for_event("order.paid", match={"order": data["order"]}),
        ctx.wait_for_hook(hook),
        child.result(),
    )
    return {"index": index, "value": value}


@workflow(name="ops.waits_child")
async def waits_child(ctx: WorkflowContext, data: dict[str, Any]) -> str:
    """A child that sleeps for a while."""
    await ctx.sleep(data["seconds"])
    return "slept"


@workflow(name="ops.echo")
async def echo(ctx: WorkflowContext, data: Any) -> Any:
    """Returns its input after one step."""
    await count(0)
    return data


@workflow(name="ops.fail")
async def fail(ctx: WorkflowContext, data: Any) -> Any:
    """Fails at once."""
    raise ValueError(f"bad input: {data}")
