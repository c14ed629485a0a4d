"""Work that goes on after the caller awaiting it went away.

grpc cancels a handler when its caller cancels, its deadline passes or its
connection drops. Work that must finish all the same (a store write and what
follows its commit in memory) runs as a task the handler awaits shielded;
when the handler is cancelled, ``Unheard`` keeps the task until it is done
(the event loop holds tasks only weakly) and takes what it raised, which no
one is left to hear (else asyncio logs it as never retrieved).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

T = TypeVar("T")


class Unheard:
    """The tasks still finishing for callers that went away."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def finish(self, work: asyncio.Future[T]) -> T:
        """``work``'s result; if the caller is cancelled meanwhile, ``work`` goes on
        and is kept here until done (the caller still gets its cancellation)."""
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done():
                self._settled(work)
            else:
                self._tasks.add(work)
                work.add_done_callback(self._settled)
            raise

    def _settled(self, work: asyncio.Future[Any]) -> None:
        self._tasks.discard(work)
        if not work.cancelled():
            work.exception()
