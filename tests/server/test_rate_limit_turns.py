"""A run released long after its start turn takes a new turn, and then starts."""

from __future__ import annotations

import asyncio

from stepd.server.clock import SkippingClock
from stepd.server.domain import RunRecord
from stepd.server.engine.rate_limits import LATE_START_MS, RateLimits
from stepd.server.store import open_store

from ..store.conftest import new_run

START_MS = 1_800_000_000_000


class SlowLoopClock(SkippingClock):
    """Each reading is 100 ms after the one before: an event loop so busy that
    every await takes longer than a late start's allowance."""

    def __init__(self) -> None:
        super().__init__(START_MS)
        self._now = START_MS

    def now_ms(self) -> int:
        self._now += 100
        return self._now


async def test_a_run_released_late_is_made_ready_with_its_new_turn_even_on_a_slow_loop(
    database: str,
) -> None:
    clock = SlowLoopClock()
    assert LATE_START_MS < 100
    store = await open_store(database, clock=clock)
    ready: list[str] = []

    def make_ready(run: RunRecord) -> None:  # as the lifecycle does: the gate comes first
        if not rates.late_start(run):
            ready.append(run.run_id)

    rates = RateLimits(store, make_ready, clock=clock)
    try:
        await store.create_run(new_run("late", create_time=START_MS - 60_000))
        run = await store.get_run("late")
        assert run is not None
        assert rates.late_start(run)  # its turn is a minute old: it takes a new one first
        for _ in range(100):
            if ready:
                break
            await asyncio.sleep(0.01)
        # The new turn already looked late by the time the run was made ready;
        # it still goes to the ready queues, once, instead of being dropped.
        assert ready == ["late"]
        assert "late" in rates.released
    finally:
        await rates.close()
        await store.close()
