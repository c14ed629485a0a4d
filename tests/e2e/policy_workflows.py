"""Workflows of the failure-policy tests: retries, timeouts, deadlines, limits.

Served by ``stepd-worker tests.e2e.policy_workflows``. Steps append
``<event> <unix time>`` lines to ``$STEPD_E2E_MARKS/<tag>.log`` so a test can
see when each attempt ran.
"""

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from stepd import RetryPolicy, WorkflowContext, step, workflow
from stepd.errors import NonRetryableError, RetryExhaustedError
from tests.e2e.workflows import mark, wait_until_released
from tests.e2e.workflows import marks_dir as _marks_dir


class Flaky(BaseModel):
    """Fail the first ``failures`` attempts, then succeed."""

    tag: str
    failures: int = 0


class CardDeclinedError(Exception):
    """A permanent failure, declared non-retryable by the policy."""


class Tagged(BaseModel):
    tag: str


def _attempts(tag: str, name: str) -> int:
    path = _marks_dir() / f"{tag}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line.split()[0] == name)


def _stamp(tag: str, name: str) -> int:
    """Record an attempt of ``name`` with its time; return its number."""
    mark(tag, f"{name} {time.time():.6f}")
    return _attempts(tag, name)


# -- backoff kinds ---------------------------------------------------------------

BACKOFF_DELAY = 0.4


def _flaky_step(name: str, policy: RetryPolicy) -> Any:
    @step(name=name, retry=policy)
    async def attempt(job: Flaky) -> int:
        number = _stamp(job.tag, name)
        if number <= job.failures:
            raise ConnectionError(f"attempt {number} failed")
        return number

    return attempt


constant_step = _flaky_step("constant", RetryPolicy(4, delay=BACKOFF_DELAY, backoff="constant"))
linear_step = _flaky_step("linear", RetryPolicy(4, delay=BACKOFF_DELAY, backoff="linear"))
exponential_step = _flaky_step(
    "exponential", RetryPolicy(4, delay=BACKOFF_DELAY, backoff="exponential", factor=2)
)
jitter_step = _flaky_step(
    "jittered", RetryPolicy(4, delay="400ms", backoff="constant", jitter=0.5, max_delay="1s")
)


@workflow(name="policy.backoff")
async def backoff(ctx: WorkflowContext, job: Flaky) -> dict[str, int]:
    return {
        "constant": await constant_step(job),
        "linear": await linear_step(job),
        "exponential": await exponential_step(job),
        "jittered": await jitter_step(job),
    }


# -- workflow defaults and per-step overrides --------------------------------------


@step
async def uses_default(tag: str) -> None:
    _stamp(tag, "uses_default")
    raise ConnectionError("always down")


@step(retry=RetryPolicy(2, delay=0.05))
async def overrides(tag: str) -> None:
    _stamp(tag, "overrides")
    raise ConnectionError("always down")


@step(retry=1)
async def no_retry(tag: str) -> None:
    _stamp(tag, "no_retry")
    raise ConnectionError("always down")


@workflow(name="policy.defaults", retry=RetryPolicy(3, delay=0.05, backoff="constant"))
async def defaults(ctx: WorkflowContext, job: Tagged) -> dict[str, Any]:
    attempts: dict[str, Any] = {}
    for name, call in (("uses_default", uses_default), ("overrides", overrides)):
        try:
            await call(job.tag)
        except RetryExhaustedError as exc:
            attempts[name] = exc.attempts
    try:
        await no_retry(job.tag)
    except ConnectionError as exc:  # one attempt: the error itself, not wrapped
        attempts["no_retry"] = type(exc).__name__
    return attempts


# -- non-retryable errors -----------------------------------------------------------


@step(retry=RetryPolicy(5, delay=0.05, non_retryable=[CardDeclinedError]))
async def charge(tag: str) -> None:
    _stamp(tag, "charge")
    raise CardDeclinedError("card declined")


@step(retry=RetryPolicy(5, delay=0.05))
async def validate(tag: str) -> None:
    _stamp(tag, "validate")
    raise NonRetryableError("the order is malformed")


@workflow(name="policy.non_retryable")
async def non_retryable(ctx: WorkflowContext, job: Tagged) -> dict[str, str]:
    caught: dict[str, str] = {}
    try:
        await charge(job.tag)
    except CardDeclinedError as exc:
        caught["charge"] = str(exc)
    try:
        await validate(job.tag)
    except NonRetryableError as exc:
        caught["validate"] = str(exc)
    return caught


# -- a long backoff, for the crash test -------------------------------------------

CRASH_BACKOFF = 3.0


@step(retry=RetryPolicy(3, delay=CRASH_BACKOFF, backoff="constant"))
async def slow_retry(job: Flaky) -> int:
    number = _stamp(job.tag, "slow_retry")
    if number <= job.failures:
        raise ConnectionError(f"attempt {number} failed")
    return number


@workflow(name="policy.slow_retry")
async def slow_retry_flow(ctx: WorkflowContext, job: Flaky) -> int:
    return await slow_retry(job)


# -- exhaustion caught for compensation ----------------------------------------------


@step(retry=RetryPolicy(3, delay=0.05, backoff="exponential"))
async def reserve_flight(tag: str) -> str:
    _stamp(tag, "reserve_flight")
    raise ConnectionError("airline unavailable")


@step
async def release_hotel(tag: str) -> str:
    _stamp(tag, "release_hotel")
    return "hotel released"


@workflow(name="policy.compensate")
async def compensate(ctx: WorkflowContext, job: Tagged) -> dict[str, Any]:
    try:
        await reserve_flight(job.tag)
    except RetryExhaustedError as exc:
        return {
            "compensation": await release_hotel(job.tag),
            "attempts": exc.attempts,
            "error_type": exc.error_type,
            "error_message": exc.error_message,
            "cause": type(exc.__cause__).__name__,
        }
    return {"compensation": None}


@step(retry=RetryPolicy(2, delay=0.05))
async def always_fails(tag: str) -> None:
    _stamp(tag, "always_fails")
    raise ValueError("the ledger is locked")


@workflow(name="policy.uncaught")
async def uncaught(ctx: WorkflowContext, job: Tagged) -> None:
    await always_fails(job.tag)


# -- step timeouts ------------------------------------------------------------------


@step(timeout="500ms", retry=RetryPolicy(3, delay=0.05))
async def slow_first(tag: str) -> int:
    number = _stamp(tag, "slow_first")
    if number == 1:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            mark(tag, "cancelled")
            raise
    return number


@step(timeout=0.3, retry=RetryPolicy(3, delay=0.05))
def slow_sync_first(tag: str) -> int:
    number = _stamp(tag, "slow_sync_first")
    if number == 1:
        time.sleep(1.0)  # a thread cannot be stopped: abandoned, its result dropped
    return number


@workflow(name="policy.step_timeout")
async def step_timeout(ctx: WorkflowContext, job: Tagged) -> dict[str, int]:
    return {
        "async": await slow_first(job.tag),
        "sync": await slow_sync_first(job.tag),
    }


@step(timeout=1.0, retry=RetryPolicy(2, delay=0.05))
async def hangs_first(tag: str) -> int:
    number = _stamp(tag, "hangs_first")
    if number == 1:
        time.sleep(60)  # noqa: ASYNC251 - blocks the worker: only the server can end it
    return number


@workflow(name="policy.hung_step")
async def hung_step(ctx: WorkflowContext, job: Tagged) -> int:
    return await hangs_first(job.tag)


# -- deadlines and execution timeouts ---------------------------------------------------


@step
async def blocked(tag: str) -> None:
    mark(tag, "blocked")
    try:
        await wait_until_released(tag)
    except asyncio.CancelledError:
        mark(tag, "cancelled")
        raise


@step
async def after(tag: str) -> None:
    mark(tag, "after")


@workflow(name="policy.blocks")
async def blocks(ctx: WorkflowContext, job: Tagged) -> None:
    await blocked(job.tag)
    await after(job.tag)


@workflow(name="policy.sleeps")
async def sleeps(ctx: WorkflowContext, job: Tagged) -> None:
    await ctx.sleep(60)
    await after(job.tag)


@workflow(name="policy.blocks_with_timeout", execution_timeout="1500ms")
async def blocks_with_timeout(ctx: WorkflowContext, job: Tagged) -> None:
    await blocked(job.tag)
    await after(job.tag)


@workflow(name="policy.sleeps_with_timeout", execution_timeout=1.5)
async def sleeps_with_timeout(ctx: WorkflowContext, job: Tagged) -> None:
    await ctx.sleep(60)
    await after(job.tag)


# -- the journal's circuit breaker ---------------------------------------------------


@step
async def tick(tag: str, n: int) -> int:
    mark(tag, f"tick {n}")
    return n


@workflow(name="policy.runaway", max_entries=5)
async def runaway(ctx: WorkflowContext, job: Tagged) -> int:
    total = 0
    for n in range(20):
        total += await tick(job.tag, n)
    return total


@workflow(name="policy.runaway_sleeper", max_entries=4)
async def runaway_sleeper(ctx: WorkflowContext, job: Tagged) -> int:
    for n in range(20):
        await tick(job.tag, n)
        await ctx.sleep(0.01)
    return 0
