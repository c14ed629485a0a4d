"""RunWaiters: callers of GetRun(wait) answered when a run ends."""

from __future__ import annotations

import asyncio
import dataclasses

from stepd.server.domain import RunRecord, RunStatus
from stepd.server.engine.waiters import RunWaiters, UnendedRuns

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


class CountedReads:
    """Reads of the run from the store, counted: it is still running."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> RunRecord:
        self.count += 1
        return RUNNING


async def test_a_run_known_unfinished_is_not_read_before_it_ends() -> None:
    waiters = RunWaiters()
    read = CountedReads()

    waiting = asyncio.create_task(waiters.wait("r1", read, 5.0, unfinished=True))
    await asyncio.sleep(0)
    assert waiters.waits_for("r1") and waiters.waiting
    waiters.answer(DONE)
    assert await waiting == DONE
    assert read.count == 0
    assert not waiters.waits_for("r1")


async def test_a_wait_that_runs_out_reads_the_run_as_it_stands() -> None:
    waiters = RunWaiters()
    read = CountedReads()

    assert await waiters.wait("r1", read, 0.05, unfinished=True) == RUNNING
    assert read.count == 1
    assert await waiters.wait("r1", read, 0.05) == RUNNING  # read first, then at the end
    assert read.count == 3


def test_unended_runs_are_forgotten_when_they_end_here_or_elsewhere_or_past_the_limit() -> None:
    unended = UnendedRuns(limit=2)
    for run_id in ("r1", "r2", "r3"):
        unended.add(run_id)
    assert "r1" not in unended and "r2" in unended and "r3" in unended
    unended.ended(dataclasses.replace(DONE, run_id="r2"))
    assert "r2" not in unended and len(unended) == 1
    unended.ended(DONE)  # one it had forgotten: nothing happens
    assert list(filter(unended.__contains__, ("r1", "r2", "r3"))) == ["r3"]
    unended.forget("r3")  # ended on another replica
    unended.forget("r9")  # never known: nothing happens
    assert len(unended) == 0
