"""Callers of ``GetRun(wait=true)``: waiting here for runs to end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from stepd.server.domain import RunRecord


class RunWaiters:
    """The callers waiting for runs to end, answered when a run ends (``answer``)."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[RunRecord | None]]] = {}
        # Those past their first read: the run had not ended then.
        self._waiting: set[asyncio.Future[RunRecord | None]] = set()

    async def wait(
        self,
        run_id: str,
        read: Callable[[], Awaitable[RunRecord]],
        seconds: float,
        *,
        unfinished: bool = False,
    ) -> RunRecord:
        """The run, once it reached a terminal status or ``seconds`` passed
        (then as it stands). ``read`` reads it from the store; the caller waits
        before the first read, so an end that commits meanwhile is not missed.
        ``unfinished``: the caller knows that the run's end, whenever it commits,
        will be answered here after this call (a worker of this server holds it),
        so there is no first read."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RunRecord | None] = loop.create_future()
        waiters = self._waiters.setdefault(run_id, [])
        waiters.append(waiter)
        expiry: asyncio.TimerHandle | None = None
        try:
            if not unfinished:
                run = await read()
                if run.status.is_terminal:
                    return run
                # Held by thousands of callers at once: keep no more per caller than
                # needed (not the record read, nor wait_for's task and futures).
                del run
            self._waiting.add(waiter)
            expiry = loop.call_later(seconds, _expire, waiter)
            ended = await waiter
            return ended if ended is not None else await read()
        finally:
            if expiry is not None:
                expiry.cancel()
            self._waiting.discard(waiter)
            waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(run_id, None)

    @property
    def run_ids(self) -> list[str]:
        """The runs callers wait for here."""
        return list(self._waiters)

    @property
    def waiting(self) -> bool:
        """Whether a caller waits here for a run that has not ended (not answered yet,
        and unfinished when it began to wait)."""
        return any(not waiter.done() for waiter in self._waiting)

    def waits_for(self, run_id: str) -> bool:
        """Whether a caller waits for ``run_id`` here."""
        return run_id in self._waiters

    def answer(self, run: RunRecord) -> None:
        """A run ended: answer the callers waiting for it."""
        for waiter in self._waiters.get(run.run_id, ()):
            if not waiter.done():
                waiter.set_result(run)

    def close(self) -> None:
        """The server stops: cancel every wait."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()


class UnendedRuns:
    """The runs created here lately that have not ended yet, at most ``limit`` of
    them (the oldest are forgotten first): such a run's end is heard here, when
    it ends here or when another replica that ended it says so."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._runs: dict[str, None] = {}  # in the order they were created

    def add(self, run_id: str) -> None:
        """``run_id`` was created here."""
        runs = self._runs
        runs[run_id] = None
        if len(runs) > self._limit:
            del runs[next(iter(runs))]

    def ended(self, run: RunRecord) -> None:
        """``run`` ended here."""
        self._runs.pop(run.run_id, None)

    def forget(self, run_id: str) -> None:
        """``run_id`` ended elsewhere (or may have)."""
        self._runs.pop(run_id, None)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)


def _expire(waiter: asyncio.Future[RunRecord | None]) -> None:
    """A wait's time is up: its caller reads the run as it stands."""
    if not waiter.done():
        waiter.set_result(None)
