"""RunWaiters: callers of GetRun(wait) answered when a run ends."""

from __future__ import annotations

import asyncio
import dataclasses

from stepd.server.domain import RunRecord, RunStatus
from stepd.server.engine.waiters import RunWaiters

RUNNING = RunRecord(
    run_id="r1",
    seq=1,
    workflow_name="orders",
    workflow_version="v1",
    status=RunStatus.RUNNING,
    input_json="{}",
    result_json=None,
    error=None,
    failure_reason=None,
    parent_run_id=None,
    root_run_id="r1",
    idempotency_key=None,
    create_time=1,
    update_time=1,
    start_time=1,
    end_time=None,
    deadline=None,
    start_time_not_before=None,
    dispatch_count=1,
    lease_id=1,
    lease_owner="w",
    cancel_reason=None,
)
DONE = dataclasses.replace(RUNNING, status=RunStatus.COMPLETED, result_json="1")


async def test_a_run_known_unfinished_is_not_read_before_it_ends() -> None:
    waiters = RunWaiters()
    reads: list[str] = []

    async def read() -> RunRecord:
        reads.append("read")
        return RUNNING

    waiting = asyncio.create_task(waiters.wait("r1", read, 5.0, unfinished=True))
    await asyncio.sleep(0)
    assert waiters.waits_for("r1") and waiters.waiting
    waiters.answer(DONE)
    assert await waiting == DONE
    assert reads == []
    assert not waiters.waits_for("r1")


async def test_a_wait_that_runs_out_reads_the_run_as_it_stands() -> None:
    waiters = RunWaiters()
    reads: list[str] = []

    async def read() -> RunRecord:
        reads.append("read")
        return RUNNING

    assert await waiters.wait("r1", read, 0.05, unfinished=True) == RUNNING
    assert reads == ["read"]
    assert await waiters.wait("r1", read, 0.05) == RUNNING  # read first, then at the end
    assert reads == ["read"] * 3
