"""The server's clock: what time it is, and calling back at a time.

Every "now" of the engine and the store (when a run was created, claimed or
ended, when a step was recorded or a wait met; which timers, delayed starts,
schedule occasions, deadlines and leases are due) is read from one ``Clock``,
and the engine's timers (``engine/timers.py``) are armed through it
(``call_at``). ``SYSTEM_CLOCK``, the default, reads the system clock and arms
event-loop timers: it costs what ``time.time_ns()`` and ``loop.call_later``
cost, nothing more.

``SkippingClock`` (what ``stepd.testing`` runs a server with) goes at the
system clock's pace from a time of its own, and can be moved ahead
(``advance_to``): every timer armed through it that falls due meanwhile
fires at once, in time order. It asks the engine to hold every timer in
memory (``horizon_ms``), so that it always knows the next one (``next_due``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

#: How far ahead a SkippingClock has the engine hold timers in memory: all of them.
HOLD_ALL_MS = 10**15


class TimerHandle(Protocol):
    """A timer armed through a clock."""

    def cancel(self) -> None:
        """Never call back (nothing happens when it already did)."""
        ...


class Clock(Protocol):
    """The time as the server sees it, and timers at such times."""

    def now_ms(self) -> int:
        """The current time, in epoch milliseconds."""
        ...

    def call_at(self, when_ms: int, callback: Callable[..., None], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` on the running event loop once the time is
        ``when_ms`` (soon when it is already)."""
        ...

    def horizon_ms(self, default: int) -> int:
        """How far ahead the engine holds timers in memory (``default``: its own)."""
        ...

    def lead_ms(self, default: int) -> int:
        """How long before their time sleeps may be handed to workers (``default``:
        the configured lead; see ``engine/timers.py``)."""
        ...


class SystemClock:
    """The system clock, and the event loop's timers."""

    __slots__ = ()

    def now_ms(self) -> int:
        """The system's time, in epoch milliseconds."""
        return time.time_ns() // 1_000_000

    def call_at(
        self, when_ms: int, callback: Callable[..., None], *args: Any
    ) -> asyncio.TimerHandle:
        """An event-loop timer due ``when_ms - now`` from now."""
        delay = max(when_ms - time.time_ns() // 1_000_000, 0) / 1000
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def horizon_ms(self, default: int) -> int:
        """The engine's own horizon."""
        return default

    def lead_ms(self, default: int) -> int:
        """The configured lead."""
        return default


SYSTEM_CLOCK = SystemClock()
"""The clock every server runs on unless it is given another."""


class _Timer:
    """A timer armed through a SkippingClock: its time, and the loop handle that
    calls it back (re-armed when the clock moves)."""

    __slots__ = ("args", "callback", "clock", "handle", "when_ms")

    def __init__(
        self,
        clock: SkippingClock,
        when_ms: int,
        callback: Callable[..., None],
        args: tuple[Any, ...],
    ) -> None:
        self.clock = clock
        self.when_ms = when_ms
        self.callback = callback
        self.args = args
        self.handle: asyncio.Handle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, now_ms: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        delay = self.when_ms - now_ms
        if delay <= 0:
            self.handle = loop.call_soon(self.fire)
        else:
            self.handle = loop.call_later(delay / 1000, self.fire)

    def fire(self) -> None:
        self.handle = None
        if self.clock.forget(self):
            self.callback(*self.args)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.clock.forget(self)


class SkippingClock:
    """A clock that goes at the system clock's pace and can be moved ahead.

    ``start_ms`` is the time it starts at (default: the system's time). Its
    timers are event-loop timers too, so time passing for real fires them as
    usual; ``advance_to`` moves the time ahead at once and fires every timer
    due by then, in time order. The engine holds all its timers in memory with
    this clock (``horizon_ms``), so ``next_due`` is the next of them.
    """

    def __init__(self, start_ms: int | None = None) -> None:
        self._offset_ms = 0 if start_ms is None else start_ms - time.time_ns() // 1_000_000
        self._timers: set[_Timer] = set()

    @property
    def offset_ms(self) -> int:
        """How far ahead of the system clock this clock is, in milliseconds."""
        return self._offset_ms

    def now_ms(self) -> int:
        """This clock's time, in epoch milliseconds."""
        return time.time_ns() // 1_000_000 + self._offset_ms

    def now_ns(self) -> int:
        """This clock's time, in epoch nanoseconds."""
        return time.time_ns() + self._offset_ms * 1_000_000

    def call_at(self, when_ms: int, callback: Callable[..., None], *args: Any) -> _Timer:
        """A timer that fires at ``when_ms`` by this clock."""
        timer = _Timer(self, when_ms, callback, args)
        self._timers.add(timer)
        timer.arm(asyncio.get_running_loop(), self.now_ms())
        return timer

    def horizon_ms(self, default: int) -> int:
        """Hold every timer in memory, so that the next one is always known."""
        return HOLD_ALL_MS

    def lead_ms(self, default: int) -> int:
        """None: time moves only when nothing else can, so every timer fires at its
        time and a worker never waits out a remainder."""
        return 0

    def next_due(self) -> int | None:
        """The time of the next timer armed through this clock, if any."""
        return min((timer.when_ms for timer in self._timers), default=None)

    def advance_to(self, when_ms: int) -> None:
        """Move the time ahead to ``when_ms`` (nothing when it is there already);
        the timers due by then fire at once, soonest first."""
        shift = when_ms - self.now_ms()
        if shift <= 0:
            return
        self._offset_ms += shift
        loop = asyncio.get_running_loop()
        now = self.now_ms()
        for timer in sorted(self._timers, key=lambda t: t.when_ms):
            timer.arm(loop, now)

    def forget(self, timer: _Timer) -> bool:
        """Drop a timer that fired or was cancelled; False when it was gone already."""
        if timer in self._timers:
            self._timers.remove(timer)
            return True
        return False
