"""Workflows with priorities, rate limits and debounce, for ``test_flow_control.py``.

Served by ``stepd-worker tests.e2e.flow_workflows``. Step bodies append
``<label> <run id> <time ns>`` lines to ``$STEPD_E2E_MARKS/<tag>.log`` so a
test can check the order runs started in and how often steps started. A run
whose input has ``block`` waits for ``<tag>.release``.
"""

from __future__ import annotations

import time
from typing import Any

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import mark, wait_until_released


@step
async def note_start(run_id: str, job: dict[str, Any]) -> str:
    """Mark the start; wait for the release when the job blocks."""
    mark(job["tag"], f"{job.get('label', '-')} {run_id} {time.time_ns()}")
    if job.get("block"):
        await wait_until_released(job["tag"])
    return str(job.get("label", ""))


@workflow(name="ordered")
async def ordered(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """One step that marks when the run started (default priority 0)."""
    return await note_start(ctx.run_id, job)


@workflow(name="urgent", priority=5)
async def urgent(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """Like ``ordered``, with a default priority of 5."""
    return await note_start(ctx.run_id, job)
