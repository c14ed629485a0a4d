"""Workflows for the operator actions' end-to-end tests (retry, fork, bulk).

Served by ``stepd-worker tests.e2e.operating_workflows``. Each step records
its execution in the marks directory (``tests.e2e.workflows.mark``), so a
test counts how often a step body ran. ``e2e.five_steps`` fails in its third
step unless the worker runs with ``STEPD_E2E_FIXED=1``: "the code was fixed".
"""

import os

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import Job, mark

FIXED_ENV = "STEPD_E2E_FIXED"


class StepThreeBrokenError(Exception):
    """The bug of step 3 (until the worker is started with the fix)."""


@step
async def step_one(tag: str) -> int:
    mark(tag, "step1")
    return 1


@step
async def step_two(tag: str, value: int) -> int:
    mark(tag, "step2")
    return value + 1


@step
async def step_three(tag: str, value: int) -> int:
    mark(tag, "step3")
    if os.environ.get(FIXED_ENV) != "1":
        raise StepThreeBrokenError("step three is broken in this version of the code")
    return value + 1


@step
async def step_four(tag: str, value: int) -> int:
    mark(tag, "step4")
    return value + 1


@step
async def step_five(tag: str, value: int) -> int:
    mark(tag, "step5")
    return value + 1


@workflow(name="e2e.five_steps")
async def five_steps(ctx: WorkflowContext, job: Job) -> int:
    """Five steps in a row; the third fails until the code is fixed."""
    value = await step_one(job.tag)
    value = await step_two(job.tag, value)
    value = await step_three(job.tag, value)
    value = await step_four(job.tag, value)
    return await step_five(job.tag, value)


@workflow(name="e2e.step_then_signal")
async def step_then_signal(ctx: WorkflowContext, job: Job) -> str:
    """One step, then wait for the signal "go", then another step."""
    await step_one(job.tag)
    go = await ctx.wait_for_signal("go")
    await step_five(job.tag, 0)
    return str(go)
