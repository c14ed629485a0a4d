"""The quiescence check: when a run only waits, act once its code went still.

A run is *quiescent* when at least one wait is pending (or a new step is held at
the gate), no step body runs, no answer the run needs is out and nothing final was
sent. Every step or wait call and every end of one counts as *activity*. Once the
run stayed quiescent, with no activity, for ``SETTLE_HOPS`` turns of the event loop,
the check acts: it delivers the journal's next met wait, holds a run whose journal
the code cannot have produced, or suspends the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

SETTLE_HOPS = 32
"""Turns of the event loop (``call_soon`` hops, no timers) a run must stay quiescent
before the next met wait is delivered or the run is suspended: every callback the run
had ready runs first, and so do chains of up to this many callbacks (task wake-ups,
``gather`` results) that lead from a finished step or wait to the workflow's next
call."""


class Settler:
    """Counts a run's activity and acts when the run stays quiescent long enough."""

    __slots__ = ("_act", "_quiescent", "_settling", "activity")

    def __init__(self, quiescent: Callable[[], bool], act: Callable[[], None]) -> None:
        self._quiescent = quiescent
        self._act = act
        self._settling = False  # a check is scheduled
        self.activity = 0
        """Bumped by every step or wait call and every end of one."""

    def touch(self) -> None:
        """Count activity: the run's code moved."""
        self.activity += 1

    def check(self) -> None:
        """Start the check when the run just became quiescent."""
        if self._settling or not self._quiescent():
            return
        self._settling = True
        asyncio.get_running_loop().call_soon(self._settle, self.activity, 0)

    def _settle(self, stamp: int, hops: int) -> None:
        """One hop of the check: act once the run stayed quiescent, with no activity,
        for SETTLE_HOPS turns of the event loop."""
        if not self._quiescent():
            self._settling = False
            return
        if self.activity != stamp:  # something moved: count again from here
            stamp, hops = self.activity, 0
        elif hops >= SETTLE_HOPS:
            self._settling = False
            self._act()
            return
        else:
            hops += 1
        asyncio.get_running_loop().call_soon(self._settle, stamp, hops)
