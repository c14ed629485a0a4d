"""Durable timers: the store's timer index plus an in-memory schedule.

Timers due within ``horizon_ms`` are held as timers of the server's clock
(``clock.py``; event-loop handles on the system clock); later ones stay only in
the store and are loaded by a refill every half horizon (at most every
``REFILL_EVERY_MAX`` seconds). So a timer fires within milliseconds of its
time, the process holds only the near future in memory, and nothing scans all
runs. The clock may widen the horizon: a skipping clock has every timer held.

Early firing (``EarlyFiring``): a run's sleep, fired at its time, still has to
be written met, claimed, sent to a worker and replayed there before the code
goes on, and in a burst of wake-ups each of those waits its turn. So a timer
that qualifies (a sleep or a retry's backoff, never a wait's timeout) is also
tried ``lead_ms`` before its time: the store meets it then only when it is its
run's only open wait (nothing could still win a race with it), recording its
fire time as the time it was met, and the worker waits out the rest by its own
clock before the workflow goes on. When the early try meets nothing, the timer
fires at its time as any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from stepd.server.clock import SYSTEM_CLOCK, Clock, TimerHandle
from stepd.server.domain import DueTimer, run_fields
from stepd.server.store.base import Store
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.timers")

FireFn = Callable[[str, str], Coroutine[Any, Any, None]]
#: Loads the stored timers due at or before ``until`` (at most ``limit``).
LoadFn = Callable[[int, int], Coroutine[Any, Any, list[DueTimer]]]
REFILL_LIMIT = 10_000
#: The longest pause between two refills, in seconds.
REFILL_EVERY_MAX = 30.0
#: Meets a timer before its time when nothing else could still end its wait;
#: True when it did (``Store.fire_timer_early``).
EarlyFireFn = Callable[[str, str], Coroutine[Any, Any, bool]]


@dataclass(frozen=True, slots=True)
class EarlyFiring:
    """Which timers are tried early, how early, and how (see the module docstring)."""

    lead_ms: int
    fire: EarlyFireFn
    applies: Callable[[str], bool]
    """Whether a wait key names a timer that may be met early."""


class TimerSchedule:
    """Fires each stored timer once, at its time, through ``fire(run_id, wait_key)``.

    By default the timers are the run waits' (``Store.due_timers``); ``load``
    gives another set keyed the same way (delayed starts, schedules'
    occasions).
    """

    def __init__(
        self,
        store: Store,
        fire: FireFn,
        horizon_ms: int = 60_000,
        *,
        load: LoadFn | None = None,
        clock: Clock = SYSTEM_CLOCK,
        early: EarlyFiring | None = None,
    ) -> None:
        self._load: LoadFn = store.due_timers if load is None else load
        self._fire = fire
        self._clock = clock
        self._horizon_ms = clock.horizon_ms(horizon_ms)
        self._handles: dict[tuple[str, str], TimerHandle] = {}
        self._early = early if early is not None and early.lead_ms > 0 else None
        self._early_handles: dict[tuple[str, str], TimerHandle] = {}
        # Early tries under way: a timer that falls due meanwhile waits for its
        # try's answer instead of writing a second time (a busy store answers late).
        self._early_tries: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._keys_by_run: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refiller: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Load the near future from the store now and every half horizon."""
        self._refiller = asyncio.create_task(self._refill_forever())

    async def close(self) -> None:
        """Forget scheduled handles (the store keeps every timer) and stop."""
        if self._refiller is not None:
            self._refiller.cancel()
            await asyncio.gather(self._refiller, return_exceptions=True)
        for handle in [*self._handles.values(), *self._early_handles.values()]:
            handle.cancel()
        self._handles.clear()
        self._early_handles.clear()
        self._keys_by_run.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def schedule(self, timer: DueTimer) -> None:
        """Hold a timer in memory if it is due within the horizon."""
        key = (timer.run_id, timer.wait_key)
        if key in self._handles:
            return
        clock = self._clock
        if timer.fire_time - clock.now_ms() > self._horizon_ms:
            return  # a later refill loads it
        self._handles[key] = clock.call_at(timer.fire_time, self._due, key)
        self._keys_by_run.setdefault(timer.run_id, set()).add(timer.wait_key)
        early = self._early
        if early is not None and early.applies(timer.wait_key):
            try_at = timer.fire_time - early.lead_ms
            if try_at > clock.now_ms():
                self._early_handles[key] = clock.call_at(try_at, self._due_early, key)

    def forget_run(self, run_id: str) -> None:
        """Drop the in-memory timers of a run that finished."""
        for wait_key in self._keys_by_run.pop(run_id, ()):
            for handles in (self._handles, self._early_handles):
                handle = handles.pop((run_id, wait_key), None)
                if handle is not None:
                    handle.cancel()

    def scheduled_count(self) -> int:
        """How many timers are held in memory."""
        return len(self._handles)

    @property
    def firing(self) -> bool:
        """True while a timer that fell due is being fired."""
        return bool(self._tasks)

    def _due(self, key: tuple[str, str]) -> None:
        self._drop(key)
        early_try = self._early_tries.get(key)
        if early_try is None:
            self._start(self._fire_safely(*key))
        else:
            self._start(self._fire_unless_met(early_try, *key))

    async def _fire_unless_met(
        self, early_try: asyncio.Task[bool], run_id: str, wait_key: str
    ) -> None:
        if not await early_try:
            await self._fire_safely(run_id, wait_key)

    def _drop(self, key: tuple[str, str]) -> None:
        """Forget a timer held here (it fired, or was met early)."""
        for handles in (self._handles, self._early_handles):
            handle = handles.pop(key, None)
            if handle is not None:
                handle.cancel()
        keys = self._keys_by_run.get(key[0])
        if keys is not None:
            keys.discard(key[1])
            if not keys:
                del self._keys_by_run[key[0]]

    def _start(self, firing: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(firing)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _due_early(self, key: tuple[str, str]) -> None:
        self._early_handles.pop(key, None)
        if key in self._handles:  # still waiting for its time
            self._early_tries[key] = self._start(self._fire_early_safely(*key))

    async def _fire_early_safely(self, run_id: str, wait_key: str) -> bool:
        """Try to meet the timer early; whether it was (errors are logged)."""
        assert self._early is not None  # only armed with it
        key = (run_id, wait_key)
        try:
            met = await self._early.fire(run_id, wait_key)
        except StoreUnavailableError as exc:
            log.warning("timer %s of run %s: storage unavailable (%s)", wait_key, run_id, exc)
            return False
        except Exception:
            log.exception(
                "timer %s of run %s failed to fire early; it fires at its time",
                wait_key,
                run_id,
                extra=run_fields(run_id),
            )
            return False
        finally:
            self._early_tries.pop(key, None)
        if met:
            self._drop(key)
        return met

    async def _fire_safely(self, run_id: str, wait_key: str) -> None:
        try:
            await self._fire(run_id, wait_key)
        except StoreUnavailableError as exc:
            log.warning("timer %s of run %s: storage unavailable (%s)", wait_key, run_id, exc)
        except Exception:
            log.exception(
                "timer %s of run %s failed to fire; retrying at the next refill",
                wait_key,
                run_id,
                extra=run_fields(run_id),
            )

    async def _refill_forever(self) -> None:
        while True:
            try:
                until = self._clock.now_ms() + self._horizon_ms
                for timer in await self._load(until, REFILL_LIMIT):
                    self.schedule(timer)
            except StoreUnavailableError as exc:
                log.warning("loading timers: storage unavailable (%s)", exc)
            except Exception:
                log.exception("loading timers failed")
            await asyncio.sleep(min(self._horizon_ms / 2000, REFILL_EVERY_MAX))
