"""A report written section by section, approved by a signal, reviewed through a hook:
the workflows that docs/cli.md drives from the ``stepd`` command line.

Serve them with ``stepd-worker examples.report``.
"""

from datetime import timedelta
from typing import Any

from stepd import WorkflowContext, step, workflow


@step
async def write_section(number: int) -> str:
    """Write one section (here: name it)."""
    return f"section {number}"


@workflow(name="report.build")
async def build_report(ctx: WorkflowContext, request: dict[str, Any]) -> dict[str, Any]:
    """Write the sections, reporting progress after each, then wait up to a day for
    the signal "approve"."""
    total = request["sections"]
    for number in range(1, total + 1):
        await write_section(number)
        ctx.set_progress({"written": number, "of": total})
    approval = await ctx.wait_for_signal("approve", timeout=timedelta(days=1))
    return {"sections": total, "approved_by": approval["by"]}


@workflow(name="report.review")
async def review_report(ctx: WorkflowContext, request: dict[str, Any]) -> dict[str, Any]:
    """Wait for a reviewer's verdict through a hook, or for the event "report.withdrawn"
    naming this report."""
    hook = ctx.create_hook()
    index, value = await ctx.first(
        ctx.wait_for_hook(hook, timeout=timedelta(days=7)),
        ctx.wait_for_event("report.withdrawn", match={"report": request["report"]}),
    )
    return {"verdict": value["verdict"]} if index == 0 else {"withdrawn": True}
