"""A ``Worker`` made from a ``Client`` (one place for connection settings), and
``Client.execute`` with every option of ``trigger``, through a real server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from stepd import Client, RunFailedError, RunStatus, Worker, WorkflowContext, step, workflow
from stepd.cli import GC_YOUNG_THRESHOLD
from tests.e2e.harness import ManagedProcess, Server
from tests.e2e.workflows import collector, collector_settings

RESULT_TIMEOUT = 30.0


@step
async def double(x: int) -> int:
    return 2 * x


@workflow(name="e2e.in_process.doubled")
async def doubled(ctx: WorkflowContext, x: int) -> int:
    return await double(x)


@workflow(name="e2e.in_process.napper")
async def napper(ctx: WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "rested"


@workflow(name="e2e.in_process.collector")
async def in_process_collector(ctx: WorkflowContext) -> list[int]:
    return await collector_settings()


@asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in this process until the block ends."""
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_ready(), RESULT_TIMEOUT)
        yield worker
    finally:
        await worker.stop()
        await task


async def test_a_worker_made_from_a_client_serves_its_runs(server: Server) -> None:
    async with Client(server.address) as client:
        worker = Worker(client, workflows=[doubled], shutdown_grace=1)
        assert worker.address == client.connection.address == server.address
        async with serving(worker):
            assert await client.execute(doubled, 21, timeout=RESULT_TIMEOUT) == 42


async def test_the_worker_only_borrows_the_client_s_settings(server: Server) -> None:
    lender = Client(server.address)
    worker = Worker(lender, workflows=[doubled], shutdown_grace=1)
    await lender.close()  # the worker opens a channel of its own
    async with serving(worker), Client(server.address) as client:
        assert await client.execute(doubled, 5, timeout=RESULT_TIMEOUT) == 10


async def test_execute_takes_the_options_of_trigger(server: Server, tag: str) -> None:
    async with (
        Client(server.address) as client,
        serving(Worker(client, workflows=[doubled, napper], shutdown_grace=1)),
    ):
        # A custom run id and an idempotency key: the second call gets the first run.
        run_id = f"doubled-{tag}"
        for _ in range(2):
            result = await client.execute(
                doubled, 4, run_id=run_id, idempotency_key=tag, timeout=RESULT_TIMEOUT
            )
            assert result == 8
        info = await client.get_run(run_id)
        assert (info.status, info.input, info.dispatch_count) == (RunStatus.COMPLETED, 4, 1)
        listed = [r.run_id async for r in client.list_runs(workflow=doubled)]
        assert listed.count(run_id) == 1 and len(listed) == 1

        # By name, pinned to a version.
        pinned_id = f"pinned-{tag}"
        result = await client.execute(
            doubled.name, 5, version=1, run_id=pinned_id, timeout=RESULT_TIMEOUT
        )
        assert result == 10
        assert (await client.get_run(pinned_id)).workflow_version == "1"

        # A start time: the run starts no earlier.
        start_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        late_id = f"late-{tag}"
        result = await client.execute(
            doubled, 3, run_id=late_id, start_at=start_at, timeout=RESULT_TIMEOUT
        )
        assert result == 6
        info = await client.get_run(late_id)
        assert info.scheduled_start_time == start_at
        assert info.start_time is not None and info.start_time >= start_at

        # A deadline: the server fails the run when it passes.
        deadline = datetime.now(UTC) + timedelta(seconds=1)
        with pytest.raises(RunFailedError) as failed:
            await client.execute(napper, 60.0, deadline=deadline, timeout=RESULT_TIMEOUT)
        assert failed.value.failure_reason == "deadline_exceeded"
        assert failed.value.info.deadline is not None
        assert abs(failed.value.info.deadline - deadline) < timedelta(milliseconds=1)


async def test_execute_gives_up_waiting_after_its_timeout(server: Server) -> None:
    async with Client(server.address) as client:
        with pytest.raises(TimeoutError):  # no worker serves it: it stays pending
            await client.execute(doubled, 1, timeout=0.5)


async def test_the_worker_command_tunes_its_collector_but_an_application_s_worker_does_not(
    server: Server, worker: ManagedProcess
) -> None:
    async with Client(server.address) as client:
        threshold, frozen = await client.execute(collector, timeout=RESULT_TIMEOUT)
        assert threshold == GC_YOUNG_THRESHOLD and frozen > 0  # stepd-worker's process

        ours = gc.get_threshold()
        worker_here = Worker(client, workflows=[in_process_collector], shutdown_grace=1)
        async with serving(worker_here):
            settings = await client.execute(in_process_collector, timeout=RESULT_TIMEOUT)
        assert settings[0] == ours[0] != GC_YOUNG_THRESHOLD
        assert gc.get_threshold() == ours
