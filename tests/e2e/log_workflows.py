"""Workflows whose log lines the JSON log tests read, served by
``stepd-worker tests.e2e.log_workflows --log-format json``."""

from __future__ import annotations

import logging

from stepd import RetryPolicy, WorkflowContext, step, workflow
from tests.e2e.workflows import mark, marks_dir

log = logging.getLogger("e2e.logs")


@step
async def noisy(tag: str) -> str:
    """Logs an error with its traceback, from inside a step."""
    try:
        raise KeyError("a multi-line\nmessage")
    except KeyError:
        log.exception("the step of %s caught an error", tag)
    return "ok"


@step(retry=RetryPolicy(max_attempts=2, delay=0.1))
async def flaky(tag: str) -> str:
    """Fails its first attempt (the worker logs the retry)."""
    first = not (marks_dir() / f"{tag}.log").exists()
    mark(tag, "flaky")
    if first:
        raise ValueError("first attempt fails")
    return "done"


@workflow(name="e2e.logs.run")
async def logged(ctx: WorkflowContext, tag: str) -> str:
    await noisy(tag)
    return await flaky(tag)
