"""The server's clocks: the system clock, and the skipping clock stepd.testing uses."""

from __future__ import annotations

import asyncio
import time

from stepd.server.clock import HOLD_ALL_MS, SYSTEM_CLOCK, SkippingClock

HOUR_MS = 3_600_000


async def test_the_system_clock_calls_back_at_a_time() -> None:
    fired: list[str] = []
    now = SYSTEM_CLOCK.now_ms()
    assert abs(now - time.time_ns() // 1_000_000) < 1000
    SYSTEM_CLOCK.call_at(now + 20, fired.append, "later")
    SYSTEM_CLOCK.call_at(now - 5, fired.append, "due")
    cancelled = SYSTEM_CLOCK.call_at(now + 10, fired.append, "cancelled")
    cancelled.cancel()
    await asyncio.sleep(0.1)
    assert fired == ["due", "later"]
    assert SYSTEM_CLOCK.horizon_ms(60_000) == 60_000


async def test_a_skipping_clock_starts_where_told_and_moves_ahead() -> None:
    clock = SkippingClock(start_ms=1_000 * HOUR_MS)
    assert abs(clock.now_ms() - 1_000 * HOUR_MS) < 1000
    assert abs(clock.now_ns() // 1_000_000 - clock.now_ms()) <= 1
    assert clock.horizon_ms(60_000) == HOLD_ALL_MS
    before = clock.now_ms()
    clock.advance_to(before - HOUR_MS)  # never backwards
    assert clock.now_ms() - before < 1000
    clock.advance_to(before + 48 * HOUR_MS)
    assert 48 * HOUR_MS <= clock.now_ms() - before < 48 * HOUR_MS + 1000


async def test_advancing_fires_the_timers_due_soonest_first_and_keeps_the_rest() -> None:
    clock = SkippingClock()
    now = clock.now_ms()
    fired: list[str] = []
    clock.call_at(now + 7 * 24 * HOUR_MS, fired.append, "week")
    clock.call_at(now + 2 * HOUR_MS, fired.append, "two hours")
    clock.call_at(now + HOUR_MS, fired.append, "one hour")
    dropped = clock.call_at(now + HOUR_MS, fired.append, "cancelled")
    dropped.cancel()
    assert clock.next_due() == now + HOUR_MS
    started = time.monotonic()
    clock.advance_to(now + 3 * HOUR_MS)
    await asyncio.sleep(0)
    assert fired == ["one hour", "two hours"]
    assert clock.next_due() == now + 7 * 24 * HOUR_MS
    clock.advance_to(now + 7 * 24 * HOUR_MS)
    await asyncio.sleep(0)
    assert fired == ["one hour", "two hours", "week"]
    assert clock.next_due() is None
    assert time.monotonic() - started < 1  # a bound, not a benchmark


async def test_a_skipping_clocks_timers_also_fire_as_time_passes() -> None:
    clock = SkippingClock()
    fired: list[str] = []
    clock.call_at(clock.now_ms() + 20, fired.append, "soon")
    await asyncio.sleep(0.2)
    assert fired == ["soon"]
    assert clock.next_due() is None
