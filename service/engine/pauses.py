"""How long the server itself did not run: a pause (SIGSTOP, a suspended VM)
or a blocked event loop.

A loop that sleeps ``period`` between ticks notes when it went to sleep; when
it wakes much later than it should have, the difference is time the server
did not run. Workers' silence during that time is not theirs: the server
could not read what they sent (``Engine``: leases and step timeouts are
extended by the pause).
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: A late wake-up shorter than this (seconds), or than the period, is noise.
MIN_PAUSE_SECONDS = 0.5


class LoopPauses:
    """Measures pauses of the server between ticks of a loop sleeping ``period``."""

    def __init__(self, period: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._period = period
        self._monotonic = monotonic
        self._threshold = max(period, MIN_PAUSE_SECONDS)
        self._slept_at = monotonic()

    def sleeping(self) -> None:
        """The loop goes to sleep for ``period`` now."""
        self._slept_at = self._monotonic()

    def woke(self) -> float:
        """The loop woke: how many seconds the server did not run meanwhile (0 when
        it woke about on time)."""
        late = self._monotonic() - self._slept_at - self._period
        return late if late >= self._threshold else 0.0
