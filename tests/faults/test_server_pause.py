"""A server paused (SIGSTOP) for longer than the lease timeout does not blame
its workers when it resumes: their silence while it was stopped does not
count, so no lease expires, no run is handed out again and no step runs
twice (a real server and a real worker process, both backends)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from stepd import Client, RunInfo, RunStatus
from tests.e2e.harness import Stack, eventually
from tests.faults import workflows as wf
from tests.faults.checker import read_log, ready, trigger_all

pytestmark = pytest.mark.slow

MODULES = ("tests.faults.workflows",)
LEASE_TIMEOUT = 2  # seconds
PAUSE_S = 3 * LEASE_TIMEOUT
RUNS = 3
HOLD_S = PAUSE_S + 3.0  # the steps are still running when the server resumes


@pytest.mark.timeout(120)
async def test_a_paused_server_does_not_expire_its_workers(
    stack: Stack, database: str, marks: Path
) -> None:
    server = stack.start_server(database, args=["--lease-timeout", str(LEASE_TIMEOUT)])
    worker = await ready(stack.start_worker(server, MODULES, concurrency=RUNS, wait=False))
    async with Client(server.address) as client:
        inputs = [wf.Hung(seed=n, hold_s=HOLD_S) for n in range(RUNS)]
        run_ids = await trigger_all(client, wf.hung, inputs)

        def started() -> set[str]:
            return {x.run_id for x in read_log(marks, wf.EXECUTIONS_LOG)}

        await eventually(lambda: started() >= set(run_ids), within=20, what="the slow steps")
        server.process.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(PAUSE_S)
        finally:
            server.process.signal(signal.SIGCONT)

        async def all_ended() -> dict[str, RunInfo]:
            while True:
                runs = {run_id: await client.get_run(run_id) for run_id in run_ids}
                if all(run.status.is_terminal for run in runs.values()):
                    return runs
                await asyncio.sleep(0.2)

        runs = await asyncio.wait_for(all_ended(), 60)

    log = server.process.log_text()
    assert "lease expired" not in log and "sent nothing for" not in log, log[-3000:]
    assert "the server did not run for" in log  # it noticed its own pause
    for run in runs.values():
        assert run.status is RunStatus.COMPLETED, run
        assert run.dispatch_count == 1, run  # never handed out again
        assert run.result["pid"] == worker.pid
    executions = Counter((x.run_id, x.step_key) for x in read_log(marks, wf.EXECUTIONS_LOG))
    assert all(count == 1 for count in executions.values()), executions
