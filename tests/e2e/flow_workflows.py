"""Workflows with priorities, rate limits and debounce, for ``test_flow_control.py``.

Served by ``stepd-worker tests.e2e.flow_workflows``. Step bodies append
``<label> <run id> <time ns>`` lines to ``$STEPD_E2E_MARKS/<tag>.log`` so a
test can check the order runs started in and how often steps started. A run
whose input has ``block`` waits for ``<tag>.release``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from stepd import Concurrency, Debounce, Rate, WorkflowContext, step, workflow
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


@step(rate=Rate(10, per=1.0, key="api", name="api"))
async def call_api(run_id: str, tag: str) -> int:
    """At most 10 calls per second across all workers: marks when it started."""
    mark(tag, f"{os.getpid()} {run_id} {time.time_ns()}")
    return os.getpid()


@workflow(name="rated_steps")
async def rated_steps(ctx: WorkflowContext, tag: str) -> int:
    """One rate-limited step."""
    return await call_api(ctx.run_id, tag)


@workflow(name="rated_starts", start_rate=Rate(5, per="1s", key="customer"))
async def rated_starts(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """At most 5 runs per customer start per second."""
    return await note_start(ctx.run_id, job)


@workflow(name="debounced", debounce=Debounce(period=0.5, key="customer"))
async def debounced(ctx: WorkflowContext, job: dict[str, Any]) -> int:
    """Triggers of one customer within half a second fold into one run."""
    await note_start(ctx.run_id, job)
    return int(job["n"])


@workflow(name="debounced_max_wait", debounce=Debounce(period=0.5, key="customer", max_wait=1.5))
async def debounced_max_wait(ctx: WorkflowContext, job: dict[str, Any]) -> int:
    """As ``debounced``, but a run starts at most 1.5 seconds after its first trigger."""
    await note_start(ctx.run_id, job)
    return int(job["n"])


@workflow(name="hourly", start_rate=Rate(1, per="1h", key="customer"))
async def hourly(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """One run per customer per hour."""
    return await note_start(ctx.run_id, job)


@workflow(name="quiet_hour", debounce=Debounce(period="1h", key="customer"))
async def quiet_hour(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """Starts once a customer was quiet for an hour."""
    return await note_start(ctx.run_id, job)


@workflow(name="one_at_a_time", concurrency=Concurrency(key="customer", limit=1))
async def one_at_a_time(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """One active run per customer."""
    return await note_start(ctx.run_id, job)


@workflow(
    name="debounced_events",
    events=["profile.changed"],
    debounce=Debounce(period=0.5, key="customer"),
)
async def debounced_events(ctx: WorkflowContext, job: dict[str, Any]) -> int:
    """Started by events; the events of one customer within half a second fold."""
    await note_start(ctx.run_id, job)
    return int(job["n"])
