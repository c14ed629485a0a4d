"""Workflows the fault-injection tests run in real worker processes.

Served by ``stepd-worker tests.faults.workflows``. Every step body appends one
line ``<run_id> <step_key> <pid>`` to ``executions.log`` in the directory named
by ``$STEPD_E2E_MARKS`` when it starts, and the same line to ``finishes.log``
when it returns. Step values are derived only from the run's input (except
``slow_pid``, which returns the pid of the process that ran it), so
``expected(workflow_name, input)`` says what every step and the run must have
recorded, whoever ran them and however often.

The log lines name the step key the SDK assigns (``link``, ``link#2``, ...: the
step's name, then ``#n`` for its n-th call in one run, see docs/protocol.md);
each body computes it from the call index it is given.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from tests.e2e.harness import MARKS_ENV

EXECUTIONS_LOG = "executions.log"
FINISHES_LOG = "finishes.log"
RELEASE_FILE = "release"
BLOCK_TIMEOUT = 60.0
MODULUS = 1_000_003


def log_dir() -> Path:
    """The directory the test gave the worker for the step logs."""
    return Path(os.environ[MARKS_ENV])


def _append(name: str, run_id: str, key: str) -> None:
    # One write(2) of one short line to an O_APPEND file: lines from several
    # processes never interleave.
    line = f"{run_id} {key} {os.getpid()}\n".encode()
    fd = os.open(log_dir() / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def step_key(name: str, index: int) -> str:
    """The key of the ``index``-th call (from 1) of step ``name`` in one run."""
    return name if index == 1 else f"{name}#{index}"


def next_value(previous: int, index: int) -> int:
    """The deterministic value of chain link ``index`` after ``previous``."""
    return (previous * 31 + index * 7 + 1) % MODULUS


# -- chain: a few short steps, each value depending on the previous one ----------


class Chain(BaseModel):
    """Input of ``faults.chain``: ``steps`` links of ``delay_ms`` each, from ``seed``."""

    seed: int
    steps: int = 4
    delay_ms: int = 5


@step
async def link(run_id: str, index: int, previous: int, delay_ms: int) -> int:
    key = step_key("link", index)
    _append(EXECUTIONS_LOG, run_id, key)
    await asyncio.sleep(delay_ms / 1000)
    value = next_value(previous, index)
    _append(FINISHES_LOG, run_id, key)
    return value


@workflow(name="faults.chain")
async def chain(ctx: WorkflowContext, job: Chain) -> dict[str, int]:
    value = job.seed
    for index in range(1, job.steps + 1):
        value = await link(ctx.run_id, index, value, job.delay_ms)
    return {"seed": job.seed, "last": value}


# -- hung: a slow step that returns the pid of the worker that ran it ------------


class Hung(BaseModel):
    """Input of ``faults.hung``: ``slow_pid`` takes ``hold_s`` seconds."""

    seed: int
    hold_s: float = 1.0


@step
def slow_pid(run_id: str, hold_s: float) -> int:
    """A sync step (it runs in a thread): a cancelled run cannot interrupt it."""
    _append(EXECUTIONS_LOG, run_id, "slow_pid")
    time.sleep(hold_s)
    _append(FINISHES_LOG, run_id, "slow_pid")
    return os.getpid()


@workflow(name="faults.hung")
async def hung(ctx: WorkflowContext, job: Hung) -> dict[str, int]:
    pid = await slow_pid(ctx.run_id, job.hold_s)
    value = await link(ctx.run_id, 1, job.seed, 1)
    return {"pid": pid, "value": value}


# -- blocking: a step that waits for the test's release file ---------------------


class Blocking(BaseModel):
    """Input of ``faults.blocking``."""

    seed: int


@step
async def block(run_id: str, value: int) -> int:
    """Wait until the test creates the release file; then pass ``value`` on."""
    _append(EXECUTIONS_LOG, run_id, "block")
    deadline = time.monotonic() + BLOCK_TIMEOUT
    while not (log_dir() / RELEASE_FILE).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} was never released")
        await asyncio.sleep(0.02)
    _append(FINISHES_LOG, run_id, "block")
    return value


@workflow(name="faults.blocking")
async def blocking(ctx: WorkflowContext, job: Blocking) -> dict[str, int]:
    first = await link(ctx.run_id, 1, job.seed, 1)
    held = await block(ctx.run_id, first)
    return {"last": await link(ctx.run_id, 2, held, 1)}


# -- sleepy: a step, a durable sleep, a step ------------------------------------


class Sleepy(BaseModel):
    """Input of ``faults.sleepy``: the run sleeps ``sleep_s`` between its two links."""

    seed: int
    sleep_s: float = 2.0


@workflow(name="faults.sleepy")
async def sleepy(ctx: WorkflowContext, job: Sleepy) -> dict[str, int]:
    first = await link(ctx.run_id, 1, job.seed, 1)
    await ctx.sleep(job.sleep_s)  # suspended: no worker holds the run meanwhile
    return {"last": await link(ctx.run_id, 2, first, 1)}


# -- what every run must have recorded -------------------------------------------


class _ExecutorPid:
    """Stands for "the pid of a process whose execution of this step finished"."""

    def __repr__(self) -> str:
        return "EXECUTOR_PID"


EXECUTOR_PID: Any = _ExecutorPid()


@dataclass(frozen=True)
class Expected:
    """What a run of a fault workflow records.

    ``steps`` maps every step key a completed run records to its value
    (``EXECUTOR_PID`` when the value is the pid of the process that ran it);
    ``result`` computes the run's result from the recorded step values.
    """

    steps: Mapping[str, Any]
    result: Callable[[Mapping[str, Any]], Any]


def _chain_values(seed: int, count: int) -> list[int]:
    values, value = [], seed
    for index in range(1, count + 1):
        value = next_value(value, index)
        values.append(value)
    return values


def expected(workflow_name: str, input_value: Any) -> Expected:
    """The expected records of a run, from its workflow name and its input (JSON)."""
    if workflow_name == chain.name:
        job = Chain.model_validate(input_value)
        values = _chain_values(job.seed, job.steps)
        last = values[-1] if values else job.seed
        return Expected(
            {step_key("link", i): v for i, v in enumerate(values, 1)},
            lambda _: {"seed": job.seed, "last": last},
        )
    if workflow_name == hung.name:
        job_h = Hung.model_validate(input_value)
        value = next_value(job_h.seed, 1)
        return Expected(
            {"slow_pid": EXECUTOR_PID, "link": value},
            lambda recorded: {"pid": recorded["slow_pid"], "value": value},
        )
    if workflow_name == blocking.name:
        job_b = Blocking.model_validate(input_value)
        first = next_value(job_b.seed, 1)
        last = next_value(first, 2)
        return Expected(
            {"link": first, "block": first, "link#2": last},
            lambda _: {"last": last},
        )
    if workflow_name == sleepy.name:
        job_s = Sleepy.model_validate(input_value)
        first = next_value(job_s.seed, 1)
        last = next_value(first, 2)
        return Expected({"link": first, "link#2": last}, lambda _: {"last": last})
    raise AssertionError(f"no expectations for workflow {workflow_name!r}")
