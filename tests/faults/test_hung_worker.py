"""Scenario 3: a hung worker (SIGSTOP) loses its runs to another worker after
the lease timeout, and its late results, once it wakes up, are refused."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from tests.e2e.harness import Stack, eventually
from tests.faults import workflows as wf
from tests.faults.checker import (
    check_guarantees,
    read_log,
    ready,
    settle,
    take_snapshot,
    trigger_all,
)

pytestmark = pytest.mark.slow

MODULES = ("tests.faults.workflows",)
LEASE_TIMEOUT = 2
CAPACITY = 4
RUNS = 6  # more than the hung worker holds: some wait for the healthy one
HOLD_S = 1.0  # how long slow_pid takes


@pytest.mark.timeout(60)
async def test_a_hung_worker_loses_its_runs_and_its_late_results_are_refused(
    stack: Stack, tmp_path: Path, marks: Path
) -> None:
    server = stack.start_server(tmp_path / "stepd.db", args=["--lease-timeout", str(LEASE_TIMEOUT)])
    hung = await ready(stack.start_worker(server, MODULES, concurrency=CAPACITY, wait=False))

    def started_by(pid: int) -> set[str]:
        return {x.run_id for x in read_log(marks, wf.EXECUTIONS_LOG) if x.pid == pid}

    async with Client(server.address) as client:
        inputs = [wf.Hung(seed=n, hold_s=HOLD_S) for n in range(RUNS)]
        run_ids = await trigger_all(client, wf.hung, inputs)
        await eventually(
            lambda: len(started_by(hung.pid)) == CAPACITY, within=10, what="the first slow steps"
        )
        hung.signal(signal.SIGSTOP)
        try:
            # Runs the hung worker was in the middle of (started, not finished).
            finished_before = {x.run_id for x in read_log(marks, wf.FINISHES_LOG)}
            stuck = started_by(hung.pid) - finished_before
            assert stuck, "the worker finished its slow steps before it was stopped"

            healthy = await ready(
                stack.start_worker(server, MODULES, concurrency=CAPACITY, wait=False)
            )
            # Everything finishes on the healthy worker while the other one is stopped.
            await settle(server.database, run_ids, within=30)
            before_waking = take_snapshot(server.database, marks)
        finally:
            hung.signal(signal.SIGCONT)

        # The woken worker completes the slow steps it was in ...
        def finished_late() -> set[str]:
            return {x.run_id for x in read_log(marks, wf.FINISHES_LOG) if x.pid == hung.pid}

        await eventually(lambda: stuck <= finished_late(), within=10, what="the late finishes")
        await asyncio.sleep(1.0)  # ... and whatever it sends late reaches the server.

        # Nothing recorded before it woke up changed, nothing ran again.
        report = await check_guarantees(
            client,
            server.database,
            marks,
            dict.fromkeys(run_ids, RunStatus.COMPLETED),
            snapshots=[before_waking],
        )

    # ... but none of its late results was recorded: the healthy worker's were.
    for run_id in stuck:
        assert report.recorded(run_id)["slow_pid"] == healthy.pid, run_id
        assert report.runs[run_id].dispatch_count >= 2, report.runs[run_id]
    by_pid = {line.pid for line in report.finishes}
    assert by_pid == {hung.pid, healthy.pid}
