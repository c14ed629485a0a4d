"""Group commit: concurrent writes share one database transaction and one commit.

Every write is an *operation*: a function that takes the writer connection,
runs its statements and returns a value. ``submit`` queues an operation and
waits for its result. A writer task takes everything queued (up to
``max_batch``), runs it in one transaction, commits once, and only then
answers each caller. There is no artificial delay: a lone operation commits
at once, and batches grow by themselves while a commit is in flight.

If anything in a batch fails (an operation raises, or the commit does), the
batch is rolled back and each of its operations is run again in a transaction
of its own, so only the caller whose operation fails gets the exception.
Operations therefore must only touch the database: they may run twice.

Operations are synchronous SQLAlchemy Core code and a whole batch runs on one
dedicated thread that owns the writer connection: one hand-off per batch
instead of several per statement (with an async driver such as aiosqlite every
statement is a round trip to the driver's thread, which measured about ten
times slower per write). The event loop never blocks on the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from stepd.server.store.errors import Classify, StoreClosedError, translate
from stepd.server.store.executor import CommitStats

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A write: runs statements on the writer connection inside a transaction.
WriteOp = Callable[[Connection], T]


def _no_store_error(_exc: BaseException) -> None:
    return None


@dataclass(slots=True)
class _Pending:
    op: WriteOp[Any]
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Outcome:
    ok: bool
    value: Any


class GroupCommitter:
    """Runs all writes on one connection, many per transaction."""

    def __init__(
        self, engine: Engine, *, max_batch: int = 500, classify: Classify | None = None
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._engine = engine
        # Says which store error a driver's exception is (``store.errors``).
        self._classify: Classify = classify or _no_store_error
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepd-writer")
        self._conn: Connection | None = None  # used on the writer thread only
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # no new writes
        self._closed = False
        self.stats = CommitStats()

    @property
    def engine(self) -> Engine:
        """The engine of the writer connection (disposed of on ``close``)."""
        return self._engine

    @property
    def ordered(self) -> bool:
        """Always: one writer applies the queue in order."""
        return True

    @property
    def commits(self) -> int:
        """How many transactions have been committed so far."""
        return self.stats.commits

    async def start(self) -> None:
        """Start the writer task (the connection opens with the first batch)."""
        if self._task is not None or self._closing:
            raise RuntimeError("the group committer was already started")
        self._task = asyncio.create_task(self._run(), name="stepd-group-commit")

    async def submit(self, op: WriteOp[T], key: str | None = None) -> T:
        """Queue a write and return its result once its transaction has committed
        (``key`` changes nothing: every write runs in the order submitted)."""
        if self._closing or self._task is None or self._task.done():
            raise StoreClosedError("the store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(op, future))
        return await future

    async def close(self) -> None:
        """Stop taking writes, finish every queued one, and release the connection."""
        if self._closed:
            return
        self._closed = self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            try:
                await self._task
            except Exception:
                log.exception("the group commit writer failed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_connection)
        self._thread.shutdown(wait=True)
        self._engine.dispose()

    # -- on the event loop ------------------------------------------------

    async def _run(self) -> None:
        batch: list[_Pending] = []
        loop = asyncio.get_running_loop()
        try:
            stop = False
            while not stop:
                batch = []
                item = await self._queue.get()
                while True:
                    if item is None:
                        stop = True
                    elif not item.future.done():  # skip callers that gave up
                        batch.append(item)
                    if stop or len(batch) >= self._max_batch or self._queue.empty():
                        break
                    item = self._queue.get_nowait()
                if not batch:
                    continue
                ops = [pending.op for pending in batch]
                outcomes = await loop.run_in_executor(self._thread, self._execute_batch, ops)
                for pending, outcome in zip(batch, outcomes, strict=True):
                    if pending.future.done():
                        continue
                    if outcome.ok:
                        pending.future.set_result(outcome.value)
                    else:
                        pending.future.set_exception(outcome.value)
        finally:
            # Only leaves work behind if the writer itself broke.
            self._closing = True
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    batch.append(item)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(StoreClosedError("the store writer stopped"))

    # -- on the writer thread ---------------------------------------------

    def _execute_batch(self, ops: list[WriteOp[Any]]) -> list[_Outcome]:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(ops))
        try:
            return [_Outcome(True, result) for result in self._transaction(ops)]
        except Exception as exc:
            if len(ops) == 1:
                return [_Outcome(False, translate(exc, self._classify))]
            log.debug("a batch of %d writes failed; retrying each alone", len(ops), exc_info=True)
        self.stats.batches_retried += 1
        outcomes = []
        for op in ops:
            try:
                (result,) = self._transaction([op])
            except Exception as exc:
                outcomes.append(_Outcome(False, translate(exc, self._classify)))
            else:
                outcomes.append(_Outcome(True, result))
        return outcomes

    def _transaction(self, ops: list[WriteOp[Any]]) -> list[Any]:
        conn = self._connection()
        transaction = conn.begin()
        try:
            results = [op(conn) for op in ops]
        except BaseException:
            self._rollback(conn)
            raise
        try:
            transaction.commit()
        except BaseException:
            # The database may keep the transaction open after a failed COMMIT
            # (SQLite does); closing the connection is the sure way to end it.
            self._discard(conn)
            raise
        self.stats.commits += 1
        self.stats.ops += len(ops)
        return results

    def _rollback(self, conn: Connection) -> None:
        try:
            conn.rollback()
        except Exception:
            log.warning("rollback failed; reopening the writer connection", exc_info=True)
            self._discard(conn)
            return
        if conn.invalidated:
            self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        try:
            conn.invalidate()
        except Exception:
            log.warning("invalidating the writer connection failed", exc_info=True)
        self._close_connection()

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            log.warning("closing the writer connection failed", exc_info=True)
