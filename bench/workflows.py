"""Benchmark workflows, served by ``stepd-worker bench.workflows``.

The steps do no I/O, so the numbers measure stepd itself: dispatch, the
worker stream, recording each step durably, and completing the run.
"""

import asyncio
from datetime import UTC, datetime
from typing import Any

from stepd import Concurrency, WorkflowContext, step, workflow


@step
async def fetch(value: int) -> int:
    return value + 1


@step
async def transform(value: int) -> int:
    return value * 2


@step
async def store(value: int) -> int:
    return value - 1


@workflow(name="bench.three_steps")
async def three_steps(ctx: WorkflowContext, value: int) -> int:
    """W1: three sequential steps; returns 2 * value + 1."""
    return await store(await transform(await fetch(value)))


@workflow(
    name="bench.three_steps_limited",
    concurrency=Concurrency(key="customer", limit=1),
)
async def three_steps_limited(ctx: WorkflowContext, job: dict[str, Any]) -> int:
    """W1 under a concurrency limit of 1 per ``job["customer"]``; returns 2 * value + 1."""
    return await store(await transform(await fetch(job["value"])))


@step
async def echo(value: int) -> int:
    return value


@workflow(name="bench.one_step")
async def one_step(ctx: WorkflowContext, value: int) -> int:
    """W2: a single step; returns value."""
    return await echo(value)


@step
async def stamp() -> float:
    """The worker's wall clock, recorded (so a replay returns the first value)."""
    import time

    return time.time()


@workflow(name="bench.sleeper")
async def sleeper(ctx: WorkflowContext, seconds: float) -> float:
    """Sleep durably until ``seconds`` after a recorded start; return how late the
    run went on after that time, in seconds (by the worker's clock).

    The wake-up time is fixed by the recorded start, not by when the sleep is
    called: in a burst, the start's step waits its turn to be recorded, and that
    wait is not lateness of the wake-up."""
    wake_at = await stamp() + seconds
    await ctx.sleep_until(datetime.fromtimestamp(wake_at, UTC))
    woke = await stamp()
    return woke - wake_at


@workflow(name="bench.long_steps")
async def long_steps(ctx: WorkflowContext, count: int) -> int:
    """``count`` sequential steps; returns their sum."""
    total = 0
    for i in range(count):
        total += await echo(i)
    return total


@workflow(name="bench.step_sleep_loop")
async def step_sleep_loop(ctx: WorkflowContext, count: int) -> int:
    """``count`` times: a step, then a durable 10 ms sleep; returns the steps' sum."""
    total = 0
    for i in range(count):
        total += await echo(i)
        await ctx.sleep(0.01)
    return total


@step
async def clock() -> float:
    """The worker's wall clock when the step ran (recorded, so a replay returns it)."""
    import time

    return time.time()


@workflow(name="bench.clocked_steps")
async def clocked_steps(ctx: WorkflowContext, count: int) -> list[float]:
    """W3: ``count`` sequential steps; returns the wall clock at each (so the time
    the first and the last 100 steps took can be compared)."""
    return [await clock() for _ in range(count)]


@workflow(name="bench.parallel_steps")
async def parallel_steps(ctx: WorkflowContext, count: int) -> int:
    """W5: ``count`` steps at once (``asyncio.gather``); returns their sum."""
    return sum(await asyncio.gather(*(echo(i) for i in range(count))))
