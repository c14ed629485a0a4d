"""Delayed start through a real server and worker: ``Client.trigger(start_at=...)``
keeps the run pending, holding nothing, until its time, also across a server restart."""

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from tests.e2e import workflows as wf
from tests.e2e.harness import Server, Stack, read_marks
from tests.e2e.test_signals import RESULT_TIMEOUT

DELAY = 3.0  # seconds


async def assert_waiting(client: Client, run_id: str, marks: Path, tag: str) -> None:
    info = await client.get_run(run_id)
    assert (info.status, info.dispatch_count, info.start_time) == (RunStatus.PENDING, 0, None)
    assert read_marks(marks, tag) == []


@pytest.mark.parametrize("restart", ["none", "sigkill"])
async def test_a_delayed_run_does_not_start_early(
    stack: Stack, server: Server, marks: Path, tag: str, restart: str
) -> None:
    stack.start_worker(server)  # it reconnects to the same address after a restart
    start_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=DELAY)
    async with Client(server.address) as client:
        handle = await client.trigger(wf.sequential, wf.Job(tag=tag, value=1), start_at=start_at)
        info = await client.get_run(handle.run_id)
        assert info.scheduled_start_time == start_at
        await asyncio.sleep(1.0)
        await assert_waiting(client, handle.run_id, marks, tag)
    if restart == "sigkill":
        assert server.process.kill() == -signal.SIGKILL
        server = stack.start_server(server.database, address=server.address)
    async with Client(server.address) as client:
        await assert_waiting(client, handle.run_id, marks, tag)
        result = await asyncio.wait_for(
            client.get_handle(handle.run_id, wf.sequential).result(), RESULT_TIMEOUT
        )
        info = await client.get_run(handle.run_id)
    assert result and read_marks(marks, tag)
    assert info.start_time is not None and info.start_time >= start_at
    assert info.dispatch_count == 1


async def test_a_cancelled_delayed_run_never_starts(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=1)
    handle = await client.trigger(wf.sequential, wf.Job(tag=tag), start_at=start_at)
    cancelled = await handle.cancel("changed my mind")
    assert cancelled.status is RunStatus.CANCELLED
    await asyncio.sleep(2.0)
    info = await client.get_run(handle.run_id)
    assert (info.status, info.dispatch_count) == (RunStatus.CANCELLED, 0)
    assert read_marks(marks, tag) == []
