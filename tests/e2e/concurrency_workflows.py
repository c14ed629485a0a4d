"""Workflows with concurrency limits, for ``test_concurrency.py``.

Served by ``stepd-worker tests.e2e.concurrency_workflows``. Each step body
appends ``<key> <run id> start|end <time ns>`` to ``$STEPD_E2E_MARKS/<tag>.log``
so a test can check from the recorded times that runs of one key never
overlapped. A run whose input has ``block`` waits for ``<tag>.release``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stepd import Concurrency, WorkflowContext, step, workflow
from stepd.errors import ChildFailedError
from tests.e2e.workflows import mark, wait_until_released


@step
async def hold_slot(ctx_run_id: str, job: dict[str, Any]) -> str:
    """The limited work: marks its start and end."""
    tag, key = job["tag"], str(job.get("customer", {}).get("id"))
    mark(tag, f"{key} {ctx_run_id} start {time.time_ns()}")
    if job.get("block"):
        await wait_until_released(tag)
    else:
        await asyncio.sleep(job.get("seconds", 0.02))
    mark(tag, f"{key} {ctx_run_id} end {time.time_ns()}")
    return key


@workflow(name="per_customer", concurrency=Concurrency(key="customer.id", limit=1))
async def per_customer(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """At most one active run per customer; the others queue in order."""
    return await hold_slot(ctx.run_id, job)


@workflow(
    name="per_customer_events",
    events=["order.placed"],
    concurrency=Concurrency(key="customer.id", limit=1, name="per_customer"),
)
async def per_customer_events(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """Started by events; shares the ``per_customer`` limit."""
    return await hold_slot(ctx.run_id, job)


@workflow(
    name="latest_wins",
    concurrency=Concurrency(key="customer.id", limit=1, strategy="cancel_in_progress"),
)
async def latest_wins(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """A new run cancels the customer's active one."""
    return await hold_slot(ctx.run_id, job)


@workflow(
    name="first_wins",
    concurrency=Concurrency(key="customer.id", limit=1, strategy="cancel_newest"),
)
async def first_wins(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """A new run is refused while the customer has an active one."""
    return await hold_slot(ctx.run_id, job)


@workflow(name="parent_of_first_wins")
async def parent_of_first_wins(ctx: WorkflowContext, job: dict[str, Any]) -> str:
    """Start a ``first_wins`` child; say how it ended."""
    try:
        return await ctx.child(first_wins, job)
    except ChildFailedError as error:
        return f"{error.status}: {error.error_message}"
