"""Group commit over a few concurrent transactions (PostgreSQL's writes).

``WriteLanes.submit`` queues a write and waits for its result. Up to
``lanes`` transactions are open at once; each takes everything queued when it
starts (up to ``max_batch``), runs it through ``run_batch`` (one transaction,
one commit) and answers each caller only after that commit. There is no
artificial delay: a lone write starts at once, and batches grow by themselves
while the lanes are busy. This saves what every transaction costs besides its
statements: BEGIN and COMMIT round trips, a WAL flush, a pool check-out.

If a batch fails for any reason (one write raised, the commit failed, a lock
was not granted in time), it is rolled back and each of its writes runs again
through ``run_one``, in a transaction of its own, so only a caller whose own
write fails gets the exception. Writes therefore must only touch the database:
they may run twice.

A caller that gives up (its task is cancelled) before its batch starts is
dropped from the queue; once started, its write runs to the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from stepd.server.store.errors import StoreClosedError
from stepd.server.store.executor import CommitStats, WriteOp

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Runs several writes in one transaction; returns their results once committed.
RunBatch = Callable[[list[WriteOp[Any]]], Awaitable[list[Any]]]
#: Runs one write in a transaction of its own (retrying what may be retried).
RunOne = Callable[[WriteOp[Any]], Awaitable[Any]]


@dataclass(slots=True)
class _Pending:
    op: WriteOp[Any]
    future: asyncio.Future[Any]


class WriteLanes:
    """Queues writes and commits them in batches over at most ``lanes`` transactions."""

    def __init__(
        self,
        run_batch: RunBatch,
        run_one: RunOne,
        stats: CommitStats,
        *,
        lanes: int,
        max_batch: int = 500,
    ) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError("lanes and max_batch must be at least 1")
        self._run_batch = run_batch
        self._run_one = run_one
        self._stats = stats
        self._max_batch = max_batch
        self._free = lanes
        self._queue: deque[_Pending] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    async def submit(self, op: WriteOp[T]) -> T:
        """Queue ``op``; return its result once its transaction has committed."""
        if self._closing:
            raise StoreClosedError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(op, future))
        self._start_lanes()
        return await future

    async def close(self) -> None:
        """Take no more writes; finish every queued and running one."""
        self._closing = True
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _start_lanes(self) -> None:
        while self._free and self._queue:
            batch: list[_Pending] = []
            while self._queue and len(batch) < self._max_batch:
                pending = self._queue.popleft()
                if not pending.future.done():  # skip callers that gave up
                    batch.append(pending)
            if not batch:
                return
            self._free -= 1
            task = asyncio.create_task(self._lane(batch), name="stepd-write-batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _lane(self, batch: list[_Pending]) -> None:
        self._stats.batches += 1
        self._stats.largest_batch = max(self._stats.largest_batch, len(batch))
        try:
            if len(batch) == 1:
                await self._deliver_one(batch[0])
                return
            ops = [pending.op for pending in batch]
            try:
                results = await self._run_batch(ops)
            except Exception:
                log.debug(
                    "a batch of %d writes failed; running each alone", len(ops), exc_info=True
                )
                self._stats.batches_retried += 1
                await asyncio.gather(*(self._deliver_one(pending) for pending in batch))
                return
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        finally:
            self._free += 1
            # Writes that queued while this lane was busy go next, as one batch.
            self._start_lanes()

    async def _deliver_one(self, pending: _Pending) -> None:
        try:
            result = await self._run_one(pending.op)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
        else:
            if not pending.future.done():
                pending.future.set_result(result)
