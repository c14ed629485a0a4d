"""Sleeps met before their time (``stepd serve --timer-lead``), with a real server
and worker: the run is handed out early, the workflow still goes on no earlier
than the sleep's time, and a sleep that another wait could still beat is met at
its time, never early."""

import asyncio
from datetime import datetime, timedelta

import pytest

from stepd import Client, RunStatus
from stepd.history import RunEventType
from tests.e2e import workflows as wf
from tests.e2e.harness import ManagedProcess, Server, Stack
from tests.e2e.test_sleep import wait_for_status

RESULT_TIMEOUT = 30
# Long, so that "early" and "at its time" are far apart on a loaded machine.
LEAD = 2.0
SLEEP = 3.0
# Fire times are kept in milliseconds: a wake-up may come up to 1 ms before the
# nanosecond the worker computed.
MS = 0.001


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
    assert result["slept"] >= SLEEP - MS
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

    assert result["slept"] >= 3 * SLEEP - MS
    (first_suspension, second_suspension) = times[RunEventType.SUSPENDED]
    first_met, second_met = times[RunEventType.WAIT_MET]
    assert first_met - first_suspension >= timedelta(seconds=SLEEP - MS)
    assert second_met - first_suspension < timedelta(seconds=3 * SLEEP - LEAD / 2)
    assert second_met > second_suspension
