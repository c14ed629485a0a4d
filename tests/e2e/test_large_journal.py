"""A run whose journal outgrows one stream message is still delivered (in
parts), a journal past the server's byte budget fails its run with a clear
reason, and neither holds up another run on the same worker (real server
process, an SDK worker in this process, both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from stepd import Client, RunFailedError, RunStatus, Worker, WorkflowContext, step, workflow
from stepd.history import RunEventType
from tests.e2e.harness import Stack

RESULT_TIMEOUT = 240.0
#: Each step's result: under the 2 MiB payload limit, 40 of them over the 64 MiB
#: a gRPC message may carry.
STEP_CHARS = 2_000_000
STEPS = 40


@step
async def big_part(index: int) -> str:
    return chr(ord("a") + index % 26) * STEP_CHARS


@workflow(name="e2e.large_journal.big")
async def big(ctx: WorkflowContext, steps: int) -> int:
    total = 0
    for index in range(steps):
        total += len(await big_part(index))
    # The wake-up after the sleep is a new dispatch with the whole journal.
    await ctx.sleep(0.2)
    return total


@step
async def small_part(x: int) -> int:
    return x + 1


@workflow(name="e2e.large_journal.bystander")
async def bystander(ctx: WorkflowContext, x: int) -> int:
    await ctx.sleep(1.0)
    return await small_part(x)


@asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in this process until the block ends."""
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.wait_ready(), 30)
        yield worker
    finally:
        await worker.stop()
        await task


async def test_a_journal_larger_than_a_message_is_delivered_in_parts(
    stack: Stack, database: str
) -> None:
    server = stack.start_server(database, args=["--max-journal-bytes", str(128 * 1024 * 1024)])
    async with Client(server.address) as client:
        # No cache of suspended runs: every wake-up replays from the full journal.
        worker = Worker(client, workflows=[big, bystander], max_cached_runs=0, shutdown_grace=1)
        async with serving(worker):
            large = await client.trigger(big, STEPS)
            # Started while the big run records its steps: both wake about together.
            await asyncio.sleep(0.5)
            other = await client.trigger(bystander, 1)
            assert await asyncio.wait_for(other.result(), RESULT_TIMEOUT) == 2
            assert await asyncio.wait_for(large.result(), RESULT_TIMEOUT) == STEPS * STEP_CHARS
            info = await client.get_run(large.run_id)
            assert info.dispatch_count == 2, info


async def test_a_journal_past_the_byte_budget_fails_its_run(stack: Stack, database: str) -> None:
    budget = 8 * 1024 * 1024
    server = stack.start_server(database, args=["--max-journal-bytes", str(budget)])
    async with Client(server.address) as client:
        worker = Worker(client, workflows=[big, bystander], shutdown_grace=1)
        async with serving(worker):
            large = await client.trigger(big, STEPS)
            other = await client.trigger(bystander, 1)
            with pytest.raises(RunFailedError) as failed:
                await asyncio.wait_for(large.result(), RESULT_TIMEOUT)
            assert failed.value.failure_reason == "journal_too_large", failed.value
            assert "max-journal-bytes" in str(failed.value), failed.value
            assert await asyncio.wait_for(other.result(), RESULT_TIMEOUT) == 2
            info = await client.get_run(large.run_id)
            assert info.status is RunStatus.FAILED
            assert info.error_type == "stepd.JournalTooLarge", info
            # The step that would pass the budget was refused: 4 of 2 MB fit in 8 MiB.
            completed = [
                e.key
                async for e in client.list_run_events(large.run_id)
                if e.type is RunEventType.STEP_COMPLETED
            ]
            assert len(completed) == 4, completed
