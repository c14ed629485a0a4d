"""Workflows of the replica tests (``tests/e2e/test_replicas.py``), served by
``stepd-worker tests.e2e.replica_workflows``.

Every step body, when it starts, appends ``<run id> <step>`` to
``$STEPD_E2E_MARKS/bodies-<pid>.log`` (one file per worker process, so
appends never interleave): the test counts from these files how often each
step body really ran, independently of what the database recorded.
"""

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow

MARKS_ENV = "STEPD_E2E_MARKS"


def record_body(run_id: str, name: str) -> None:
    """Append one line: the body of step ``name`` of run ``run_id`` started."""
    path = Path(os.environ[MARKS_ENV]) / f"bodies-{os.getpid()}.log"
    with path.open("a") as file:
        file.write(f"{run_id} {name}\n")


class Mixed(BaseModel):
    """Input of ``replica.mixed``: what the run does between its two steps."""

    kind: str  # "steps", "sleep", "signal" or "child"
    value: int = 0


@step
async def body(run_id: str, name: str, value: int) -> int:
    record_body(run_id, name)
    await asyncio.sleep(0.005)  # a body takes a little time: a crash can cut one short
    return value + 1


@workflow(name="replica.leaf")
async def leaf(ctx: WorkflowContext, value: int) -> int:
    return await body(ctx.run_id, "leaf", value)


@workflow(name="replica.mixed")
async def mixed(ctx: WorkflowContext, job: Mixed) -> int:
    value = await body(ctx.run_id, "first", job.value)
    if job.kind == "sleep":
        await ctx.sleep(0.3)
    elif job.kind == "signal":
        value += await ctx.wait_for_signal("go", type=int)
    elif job.kind == "child":
        value += await ctx.child(leaf, value)
    return await body(ctx.run_id, "second", value)


@workflow(name="replica.nap")
async def nap(ctx: WorkflowContext, seconds: float) -> str:
    """One step, a durable sleep, one step."""
    await body(ctx.run_id, "before", 0)
    await ctx.sleep(seconds)
    await body(ctx.run_id, "after", 0)
    return "rested"


@workflow(name="replica.block")
async def block(ctx: WorkflowContext, marker: str) -> str:
    """A step that runs until the file ``marker`` (in the marks directory) exists."""
    await body(ctx.run_id, "start", 0)
    await wait_for_file(ctx.run_id, marker)
    return "unblocked"


@step
async def wait_for_file(run_id: str, marker: str) -> None:
    record_body(run_id, "wait")
    path = Path(os.environ[MARKS_ENV]) / marker
    for _ in range(6000):
        if path.exists():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{marker} never appeared")
