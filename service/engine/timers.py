"""Durable timers: the store's timer index plus an in-memory schedule.

Timers due within ``horizon_ms`` are held as timers of the server's clock
(``clock.py``; event-loop handles on the system clock); later ones stay only in
the store and are loaded by a refill every half horizon (at most every
``REFILL_EVERY_MAX`` seconds). So a timer fires within milliseconds of its
time, the process holds only the near future in memory, and nothing scans all
runs. The clock may widen the horizon: a skipping clock has every timer held.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
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
    ) -> None:
        self._load: LoadFn = store.due_timers if load is None else load
        self._fire = fire
        self._clock = clock
        self._horizon_ms = clock.horizon_ms(horizon_ms)
        self._handles: dict[tuple[str, str], TimerHandle] = {}
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
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
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

    def forget_run(self, run_id: str) -> None:
        """Drop the in-memory timers of a run that finished."""
        for wait_key in self._keys_by_run.pop(run_id, ()):
            handle = self._handles.pop((run_id, wait_key), None)
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
        self._handles.pop(key, None)
        keys = self._keys_by_run.get(key[0])
        if keys is not None:
            keys.discard(key[1])
            if not keys:
                del self._keys_by_run[key[0]]
        task = asyncio.create_task(self._fire_safely(*key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
