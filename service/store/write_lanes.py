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

A write may name a *key* (the store passes the run it is about). Writes with
one key run in the order submitted: a batch takes a write only when no write
with its key is running in another lane or waiting ahead of it, and a failed
batch runs a key's writes one after another. So lanes never race on one run:
its step records keep their order (their sequence numbers are assigned as
they run), and they never wait for each other's locks.

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
    key: str | None


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
        self._busy: dict[str, int] = {}  # keys of the writes in running batches
        self._closing = False

    async def submit(self, op: WriteOp[T], key: str | None = None) -> T:
        """Queue ``op``; return its result once its transaction has committed.
        Writes with the same ``key`` run in the order submitted."""
        if self._closing:
            raise StoreClosedError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(op, future, key))
        self._start_lanes()
        return await future

    async def close(self) -> None:
        """Take no more writes; finish every queued and running one."""
        self._closing = True
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _start_lanes(self) -> None:
        while self._free and self._queue:
            batch = self._take_batch()
            if not batch:
                return
            for pending in batch:
                if pending.key is not None:
                    self._busy[pending.key] = self._busy.get(pending.key, 0) + 1
            self._free -= 1
            task = asyncio.create_task(self._lane(batch), name="stepd-write-batch")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take_batch(self) -> list[_Pending]:
        """The queued writes that may run now, in order; the others stay queued."""
        batch: list[_Pending] = []
        kept: deque[_Pending] = deque()
        held: set[str] = set()  # keys with a write kept back in this pass
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            if pending.future.done():  # skip callers that gave up
                continue
            key = pending.key
            if key is not None and (key in held or key in self._busy):
                held.add(key)
                kept.append(pending)
            else:
                batch.append(pending)
        if kept:
            kept.extend(self._queue)
            self._queue = kept
        return batch

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
                await asyncio.gather(*(self._deliver_in_order(g) for g in _by_key(batch)))
                return
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
        finally:
            for pending in batch:
                if pending.key is not None:
                    self._busy[pending.key] -= 1
                    if not self._busy[pending.key]:
                        del self._busy[pending.key]
            self._free += 1
            # Writes that queued while this lane was busy go next, as one batch.
            self._start_lanes()

    async def _deliver_in_order(self, writes: list[_Pending]) -> None:
        for pending in writes:
            await self._deliver_one(pending)

    async def _deliver_one(self, pending: _Pending) -> None:
        try:
            result = await self._run_one(pending.op)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
        else:
            if not pending.future.done():
                pending.future.set_result(result)


def _by_key(batch: list[_Pending]) -> list[list[_Pending]]:
    """The batch's writes grouped by key, in order (a write without one alone)."""
    groups: dict[object, list[_Pending]] = {}
    for pending in batch:
        groups.setdefault(pending.key if pending.key is not None else id(pending), []).append(
            pending
        )
    return list(groups.values())
