"""Durable sleep with a real server and real worker processes: the run is suspended
while it sleeps, holds no worker slot, and survives server and worker crashes."""

import asyncio
import signal
import time
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from tests.e2e import workflows as wf
from tests.e2e.harness import Server, Stack, read_marks

RESULT_TIMEOUT = 30
# The server stores fire times in milliseconds: a wake-up can come up to 1 ms before
# the nanosecond the worker computed.
MS = 0.001


async def wait_for_status(client: Client, run_id: str, status: RunStatus) -> None:
    """Poll until the run is in ``status``."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while (info := await client.get_run(run_id)).status is not status:
        assert time.monotonic() < deadline, f"run {run_id} never {status}: {info}"
        await asyncio.sleep(0.02)


async def test_a_workflow_sleeps_between_two_steps(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    started = time.monotonic()
    result = await asyncio.wait_for(
        client.execute(wf.nap, wf.Nap(tag=tag, seconds=1.0)), RESULT_TIMEOUT
    )
    assert time.monotonic() - started >= 1.0
    assert result["slept"] >= 1.0 - MS
    assert read_marks(marks, tag) == ["before", "after"]
    assert result["after"] - result["before"] == pytest.approx(result["slept"])


async def test_a_sleeping_run_is_suspended_and_holds_no_worker_slot(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    stack.start_worker(server, concurrency=1)
    handle = await client.trigger(wf.nap, wf.Nap(tag=tag, seconds=4.0))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    # The worker's only slot is free: another run goes through while the first sleeps.
    other = await asyncio.wait_for(
        client.execute(wf.sequential, wf.Job(tag=f"{tag}-other", value=1)), RESULT_TIMEOUT
    )
    assert other == "1 -> 2 -> 4"
    assert (await client.get_run(handle.run_id)).status is RunStatus.SUSPENDED

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result["slept"] >= 4.0 - MS
    info = await client.get_run(handle.run_id)
    assert info.status is RunStatus.COMPLETED
    assert info.dispatch_count == 2  # once to sleep, once when the timer fired
    assert read_marks(marks, tag) == ["before", "after"]


async def test_two_sleeps_at_once_keep_their_first_wake_up_times(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.two_naps, wf.Nap(tag=tag, seconds=1.0))
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    # Woken at 1 s by the short sleep, the run re-sent the long one (3 s from then,
    # by the clock of the replay); the server kept its first time: 3 s, not 4 s.
    assert 3.0 - MS <= result["slept"] < 3.8
    assert read_marks(marks, tag) == ["before", "after"]
    assert (await client.get_run(handle.run_id)).dispatch_count == 3


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_a_sleep_survives_a_server_restart(
    stack: Stack, server: Server, marks: Path, tag: str, how: str
) -> None:
    stack.start_worker(server)  # it reconnects to the same address after the restart
    async with Client(server.address) as client:
        # Long enough that the restarted server is up before the timer is due,
        # even on a busy machine where starting a server takes seconds.
        handle = await client.trigger(wf.nap, wf.Nap(tag=tag, seconds=8.0))
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    if how == "sigkill":
        assert server.process.kill() == -signal.SIGKILL
    else:
        assert server.process.stop() == 0
    again = stack.start_server(server.database, address=server.address)
    async with Client(again.address) as client:
        assert (await client.get_run(handle.run_id)).status is RunStatus.SUSPENDED
        resumed = client.get_handle(handle.run_id, wf.nap)
        result = await asyncio.wait_for(resumed.result(), RESULT_TIMEOUT)

    # The fire time was stored before the restart: the run woke after it, not 8 s
    # after the restart, and the step before the sleep did not run again.
    assert result["after"] >= result["before"] + 8.0 - MS
    assert read_marks(marks, tag) == ["before", "after"]


async def test_a_sleep_survives_a_killed_worker(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    doomed = stack.start_worker(server)
    handle = await client.trigger(wf.nap, wf.Nap(tag=tag, seconds=2.0))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    assert doomed.kill() == -signal.SIGKILL  # it holds nothing: the run is with the server
    assert (await client.get_run(handle.run_id)).status is RunStatus.SUSPENDED
    stack.start_worker(server)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    assert result["slept"] >= 2.0 - MS
    assert read_marks(marks, tag) == ["before", "after"]
    assert (await client.get_run(handle.run_id)).dispatch_count == 2


async def test_a_loop_of_two_hundred_steps_and_sleeps_completes(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    count = 200
    handle = await client.trigger(wf.ticker, wf.Ticks(tag=tag, count=count, seconds=0.01))
    result = await asyncio.wait_for(handle.result(), 90)

    assert result == sum(range(count))
    # Every step ran once: each wake-up replayed the steps before it from the journal.
    assert read_marks(marks, tag) == [f"tick:{i}" for i in range(count)]
    info = await client.get_run(handle.run_id)
    assert info.dispatch_count == count + 1
