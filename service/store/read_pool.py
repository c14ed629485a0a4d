"""Reads on a small pool of threads, each read on a pooled connection.

A read is a function that takes a connection and returns a value; it runs on
one of ``threads`` threads so the event loop never blocks on the database,
and costs one hand-off to a thread and back (an async driver such as
aiosqlite costs several per statement).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine

from stepd.server.store.errors import Classify, StoreClosedError, translate

T = TypeVar("T")

#: A read: runs statements on a reader connection.
ReadOp = Callable[[Connection], T]


class ReadPool:
    """Runs read operations on ``threads`` threads over ``engine``'s connections."""

    def __init__(self, engine: Engine, *, threads: int, classify: Classify | None = None) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._engine = engine
        # Says which store error a driver's exception is (``store.errors``).
        self._classify = classify
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stepd-reader")
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The engine reads run on."""
        return self._engine

    async def run(self, op: ReadOp[T]) -> T:
        """Run ``op`` on a reader connection and return its result."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._call, op)

    def _call(self, op: ReadOp[T]) -> T:
        try:
            with self._engine.connect() as conn:
                return op(conn)
        except Exception as exc:
            error = exc if self._classify is None else translate(exc, self._classify)
            if error is exc:
                raise
            raise error from exc

    async def close(self) -> None:
        """Wait for reads in flight, then close every connection."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown, True)
        self._engine.dispose()
