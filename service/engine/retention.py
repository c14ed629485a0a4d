"""Retention: delete finished runs once they ended longer ago than the period.

A background task deletes expired runs (their journal, waits, signals, hooks
and history with them) oldest first, in small batches, each one short write
transaction, with a pause after each so the hot path's writes keep going
between them. The pause grows with how long the batch took (queueing behind
the hot path's writes included), so deletion takes at most about
``DUTY_CYCLE`` of the writer's time, and less when the server is busy. When a
batch comes back short, nothing more is due: the task sleeps until the next
sweep. Every replica may run it; on PostgreSQL a batch
skips runs another transaction holds, and two replicas deleting the same run
delete it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.store.base import Store
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.retention")

#: Runs deleted per write transaction.
BATCH_SIZE = 100
#: The shortest pause between two batches while expired runs are left, in seconds.
BATCH_PAUSE_SECONDS = 0.05
#: The share of the time deletion may take: after a batch that took t seconds,
#: the task pauses t * (1 / DUTY_CYCLE - 1) (at least BATCH_PAUSE_SECONDS).
DUTY_CYCLE = 0.1
#: Seconds between sweeps once no expired run is left (at most).
SWEEP_SECONDS = 60.0


class Retention:
    """Deletes runs that ended more than ``period_ms`` ago, in the background."""

    def __init__(
        self,
        store: Store,
        period_ms: int,
        *,
        clock: Clock = SYSTEM_CLOCK,
        batch_size: int = BATCH_SIZE,
        pause_seconds: float = BATCH_PAUSE_SECONDS,
        duty_cycle: float = DUTY_CYCLE,
    ) -> None:
        self._store = store
        self._period_ms = period_ms
        self._clock = clock
        self._batch_size = batch_size
        self._pause = pause_seconds
        self._rest = 1 / duty_cycle - 1
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0
        """Runs deleted since the server started."""

    def start(self) -> None:
        """Start the background task (nothing when the period is 0: keep runs forever)."""
        if self._period_ms > 0 and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop the task (a batch in flight completes or rolls back whole)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep_once(self) -> int:
        """Delete one batch of expired runs; return how many."""
        before = self._clock.now_ms() - self._period_ms
        deleted = await self._store.delete_expired_runs(before, self._batch_size)
        self.deleted += deleted
        return deleted

    async def _run(self) -> None:
        idle = min(SWEEP_SECONDS, max(self._period_ms / 10_000, 0.1))
        while True:
            started = time.monotonic()
            try:
                deleted = await self.sweep_once()
            except StoreUnavailableError as exc:
                log.warning("deleting expired runs: storage unavailable (%s)", exc)
                deleted = 0
            except Exception:
                log.exception("deleting expired runs failed; trying again later")
                deleted = 0
            if deleted:
                log.debug("retention deleted %d runs (%d so far)", deleted, self.deleted)
            if deleted < self._batch_size:
                await asyncio.sleep(idle)
                continue
            took = time.monotonic() - started
            await asyncio.sleep(max(self._pause, took * self._rest))
