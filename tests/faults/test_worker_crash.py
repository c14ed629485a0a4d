"""Scenario 1: workers SIGKILLed again and again mid-step under load."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from tests.e2e.harness import ManagedProcess, Stack
from tests.faults import workflows as wf
from tests.faults.checker import (
    Snapshot,
    check_guarantees,
    ready,
    settle,
    take_snapshot,
    trigger_all,
    unfinished_runs,
)

pytestmark = pytest.mark.slow

MODULES = ("tests.faults.workflows",)
RUNS = 800  # of 5 steps of 20 ms: with 2 x 8 slots, the load outlasts the kills
KILLS = 5
MIN_KILLS_UNDER_LOAD = 3


@pytest.mark.timeout(90)
async def test_sigkilled_workers_lose_no_run_and_no_recorded_step(
    stack: Stack, tmp_path: Path, marks: Path
) -> None:
    server = stack.start_server(tmp_path / "stepd.db")

    def start_worker() -> ManagedProcess:
        return stack.start_worker(server, MODULES, concurrency=8, wait=False)

    workers = [await ready(start_worker()), await ready(start_worker())]
    killed: list[int] = []  # pids of workers killed while runs were unfinished
    snapshots: list[Snapshot] = []  # what was recorded right before each kill
    inputs = [wf.Chain(seed=n, steps=5, delay_ms=20) for n in range(RUNS)]
    rng = random.Random()
    async with Client(server.address) as client:
        triggering = asyncio.create_task(trigger_all(client, wf.chain, inputs))
        for round_ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.5, 1.0))
            under_load = not triggering.done() or bool(unfinished_runs(server.database))
            if not under_load:
                break
            slot = round_ % len(workers)  # each worker in turn
            victim = workers[slot]
            snapshots.append(take_snapshot(server.database, marks))
            assert victim.kill() == -signal.SIGKILL
            killed.append(victim.pid)
            workers[slot] = await ready(start_worker())  # triggers keep flowing meanwhile
        run_ids = await triggering
        # A dead worker's runs go back to the queue at once, not after a lease timeout.
        await settle(server.database, run_ids, within=20)
        expected = dict.fromkeys(run_ids, RunStatus.COMPLETED)
        report = await check_guarantees(
            client, server.database, marks, expected, snapshots=snapshots
        )

    assert len(killed) >= MIN_KILLS_UNDER_LOAD, f"the load ended after {len(killed)} kills"
    assert any(r.dispatch_count >= 2 for r in report.runs.values()), "no kill hit a run"
    # Kills landed mid-step: bodies that started in a killed worker and never
    # finished there; each of those steps was recorded by a later execution.
    finished = {(x.run_id, x.step_key, x.pid) for x in report.finishes}
    cut_off = [
        x
        for x in report.executions
        if x.pid in killed and (x.run_id, x.step_key, x.pid) not in finished
    ]
    assert cut_off, "no kill landed mid-step"
    assert all((x.run_id, x.step_key) in report.steps for x in cut_off)
