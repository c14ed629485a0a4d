"""How long the server itself did not run: a pause (SIGSTOP, a suspended VM)
or a blocked event loop.

A task that sleeps ``period`` between ticks notes when it went to sleep; when
it wakes much later than it should have, the difference is time the server
did not run. Workers' silence during that time is not theirs: the server
could not read what they sent (``Engine``: leases and step timeouts are
extended by the pause).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: A late wake-up shorter than this (seconds), or than the period, is noise.
MIN_PAUSE_SECONDS = 0.5


class PauseSensor:
    """A task of its own that sleeps ``period`` again and again and notes how
    late it wakes; ``collect`` hands over what it noticed.

    A loop that does other work between its sleeps (the lease check awaits the
    store) cannot tell a pause during that work from slow storage; this task
    does nothing else, so a pause at any moment shows as a late wake-up. A
    pause still going on when ``collect`` is called (the sensor's own wake-up
    not run yet) is counted then, and not again when the sensor wakes.
    """

    def __init__(self, period: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._period = period
        self._monotonic = monotonic
        self._threshold = max(period, MIN_PAUSE_SECONDS)
        self._slept_at = monotonic()
        self._noticed = 0.0
        self._taken_from_this_sleep = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        self._task = asyncio.create_task(self._tick_forever())

    async def close(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def collect(self) -> float:
        """Seconds the server did not run since the last call (0 when none)."""
        current = self._late_now()
        paused = self._noticed + current - self._taken_from_this_sleep
        self._noticed = 0.0
        self._taken_from_this_sleep = current
        return paused

    def _late_now(self) -> float:
        late = self._monotonic() - self._slept_at - self._period
        return late if late >= self._threshold else 0.0

    async def _tick_forever(self) -> None:
        while True:
            self._slept_at = self._monotonic()
            await asyncio.sleep(self._period)
            late = self._late_now()
            self._noticed += max(0.0, late - self._taken_from_this_sleep)
            self._taken_from_this_sleep = 0.0
