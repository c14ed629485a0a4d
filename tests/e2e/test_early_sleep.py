"""Sleeps met before their time (``stepd serve --timer-lead``), with a real server
and worker: the run is handed out early, the workflow still goes on no earlier
than the sleep's time, and a sleep that another wait could still beat is met at
its time, never early. While a run waits out such a sleep it takes no worker slot,
yet past it the worker runs no more than its concurrency's worth of runs at once."""

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from stepd.history import RunEventType
from tests.e2e import workflows as wf
from tests.e2e.harness import ManagedProcess, Server, Stack, eventually, read_marks, release
from tests.e2e.test_sleep import wait_for_status

RESULT_TIMEOUT = 30
# Long, so that "early" and "at its time" are far apart on a loaded machine.
LEAD = 2.0
SLEEP = 3.0
# Fire times are kept in milliseconds: a wake-up may come up to 1 ms before the
# nanosecond the worker computed.
MS = 0.001
# What a run measures with ctx.now() (the wall clock) after waiting out an early
# sleep on the monotonic clock: a virtual machine's time sync may slew one against
# the other by a few milliseconds over the sleep. Still far from LEAD early.
SLEPT_MARGIN = 0.01


@pytest.fixture
def early_server(stack: Stack, database: str) -> Server:
    return stack.start_server(database, args=["--timer-lead", str(LEAD)])


@pytest.fixture
def early_worker(stack: Stack, early_server: Server) -> ManagedProcess:
    return stack.start_worker(early_server)


async def event_times(client: Client, run_id: str) -> dict[RunEventType, list[datetime]]:
    """When each kind of history entry of the run was written."""
    times: dict[RunEventType, list[datetime]] = {}
    async for event in client.list_run_events(run_id):
        assert event.time is not None
        times.setdefault(event.type, []).append(event.time)
    return times


async def test_a_sleep_met_early_goes_on_at_its_time(
    early_server: Server, early_worker: ManagedProcess, tag: str
) -> None:
    async with Client(early_server.address) as client:
        handle = await client.trigger(wf.nap, wf.Nap(tag=tag, seconds=SLEEP))
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        times = await event_times(client, handle.run_id)

    # The workflow went on only once the whole sleep had passed, by the worker's clock.
    assert result["slept"] >= SLEEP - SLEPT_MARGIN
    # ... though the server met the sleep and handed the run out well before that.
    (suspended,), (met,) = times[RunEventType.SUSPENDED], times[RunEventType.WAIT_MET]
    assert met - suspended < timedelta(seconds=SLEEP - LEAD / 2)
    assert len(times[RunEventType.DISPATCHED]) == 2


async def test_a_sleep_raced_by_a_signal_is_not_met_early(
    early_server: Server, early_worker: ManagedProcess, tag: str
) -> None:
    async with Client(early_server.address) as client:
        handle = await client.trigger(
            wf.sleep_or_signal, wf.Awaiting(tag=tag, name="go", seconds=SLEEP)
        )
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
        # Past the time an early wake-up would have come (SLEEP - LEAD), before the
        # sleep's own time: the signal must still win.
        await asyncio.sleep(SLEEP - LEAD / 2)
        await client.signal(handle.run_id, "go", "in time")
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    assert result == {"winner": "signal", "value": "in time"}


async def test_a_sleep_beside_another_wait_is_met_at_its_time(
    early_server: Server, early_worker: ManagedProcess, tag: str
) -> None:
    # Two sleeps at once: while both are open neither is met early; the longer one,
    # alone after the shorter woke the run, is.
    async with Client(early_server.address) as client:
        handle = await client.trigger(wf.two_naps, wf.Nap(tag=tag, seconds=SLEEP))
        result = await asyncio.wait_for(handle.result(), 3 * SLEEP + RESULT_TIMEOUT)
        times = await event_times(client, handle.run_id)

    assert result["slept"] >= 3 * SLEEP - SLEPT_MARGIN
    (first_suspension, second_suspension) = times[RunEventType.SUSPENDED]
    first_met, second_met = times[RunEventType.WAIT_MET]
    # The sleeps began after the step that read the clock (the suspension is sent
    # once that step's outcome is answered: a few ms later).
    began = datetime.fromtimestamp(result["before"], first_met.tzinfo)
    assert first_met - began >= timedelta(seconds=SLEEP - MS)
    assert second_met - first_suspension < timedelta(seconds=3 * SLEEP - LEAD / 2)
    assert second_met > second_suspension


@pytest.fixture
def one_slot_worker(stack: Stack, early_server: Server) -> ManagedProcess:
    return stack.start_worker(early_server, concurrency=1)


async def wait_for_early_hand_out(client: Client, run_id: str) -> None:
    """Wait until the run, suspended at its sleep, is running again: handed out early."""
    await wait_for_status(client, run_id, RunStatus.SUSPENDED)
    await wait_for_status(client, run_id, RunStatus.RUNNING)


async def test_a_run_waiting_out_an_early_sleep_leaves_its_slot_to_others(
    early_server: Server, one_slot_worker: ManagedProcess, tag: str
) -> None:
    async with Client(early_server.address) as client:
        napping = await client.trigger(wf.nap, wf.Nap(tag=tag, seconds=SLEEP))
        await wait_for_early_hand_out(client, napping.run_id)
        # The worker's one slot is free while the nap waits out its sleep: another
        # run starts and ends meanwhile, not once the nap is over.
        other = await client.execute(wf.echo, "meanwhile")
        other_ended = time.time()
        result = await asyncio.wait_for(napping.result(), RESULT_TIMEOUT)

    assert other == "meanwhile"
    assert other_ended < result["after"]
    assert result["slept"] >= SLEEP - SLEPT_MARGIN


async def test_past_an_early_sleep_a_run_waits_for_a_free_slot(
    early_server: Server, one_slot_worker: ManagedProcess, marks: Path, tag: str
) -> None:
    napper, holder = f"{tag}-nap", f"{tag}-hold"
    async with Client(early_server.address) as client:
        napping = await client.trigger(wf.nap, wf.Nap(tag=napper, seconds=SLEEP))
        await wait_for_early_hand_out(client, napping.run_id)
        # While the nap waits out its sleep, the one slot goes to a run whose step
        # blocks until released.
        holding = await client.trigger(wf.crash_resume, wf.Job(tag=holder))
        await eventually(lambda: "hold:start" in read_marks(marks, holder))
        # Well past the nap's time, its code has not gone on: the slot is taken.
        await asyncio.sleep(SLEEP)
        assert read_marks(marks, napper) == ["before"]
        released = time.time()
        release(marks, holder)
        await asyncio.wait_for(holding.result(), RESULT_TIMEOUT)
        result = await asyncio.wait_for(napping.result(), RESULT_TIMEOUT)

    assert result["after"] >= released
    assert read_marks(marks, napper) == ["before", "after"]
