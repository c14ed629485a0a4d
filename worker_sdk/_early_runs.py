"""Runs handed out before their time, and when they may go on.

The server meets a run's sleep a little before its time and hands the run out
then, so that the run is replayed and ready when the time comes (see
``_journal.py``). The worker declares ``early_capacity``: that many such runs
count against no slot while they wait out the rest of the sleep, on the server
(``WorkerHello.early_capacity``) as here. When its time comes, such a run goes
on only while fewer than ``capacity`` runs of the session go on; otherwise it
waits its turn, first come first served. So a burst of sleeps ending together
does not fill the worker's slots with runs that only wait, and the worker still
runs the code of at most ``capacity`` runs at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class EarlyRuns:
    """A session's runs that wait out a sleep met early, and their turns to go on."""

    __slots__ = ("_capacity", "_held", "_turns", "_waiting")

    def __init__(self, capacity: int, held: Callable[[], int]) -> None:
        """``held`` counts the runs the session holds (going on or waiting)."""
        self._capacity = capacity
        self._held = held
        self._waiting: set[str] = set()  # held, and counting against no slot
        self._turns: deque[tuple[str, asyncio.Future[None]]] = deque()

    @property
    def going_on(self) -> int:
        """How many held runs count against a slot."""
        return self._held() - len(self._waiting)

    def arrived(self, run_id: str) -> None:
        """``run_id`` arrived with a sleep met early: it holds no slot until it goes on."""
        self._waiting.add(run_id)

    def waits(self, run_id: str) -> bool:
        """Whether ``run_id`` waits out a sleep met early (holds no slot)."""
        return run_id in self._waiting

    async def go_on(self, run_id: str) -> None:
        """Return once ``run_id`` may go on past its sleep: at once unless it arrived
        early and the session's slots are full, or other runs wait for one."""
        if run_id not in self._waiting:
            return
        self._admit()
        if not self._turns and self.going_on < self._capacity:
            self._waiting.discard(run_id)
            return
        turn = asyncio.get_running_loop().create_future()
        self._turns.append((run_id, turn))
        try:
            await turn
        finally:
            # Cancelled (the run is given up, or its code stopped waiting): it no
            # longer waits for a turn, and any code of it that goes on counts.
            self._waiting.discard(run_id)

    def left(self, run_id: str) -> None:
        """``run_id`` is no longer held here (ended, parked or given up): a slot may
        be free for the next run waiting for one."""
        self._waiting.discard(run_id)
        self._admit()

    def _admit(self) -> None:
        """Give turns, oldest first, while slots are free; drop turns given up."""
        turns = self._turns
        while turns:
            waiting_id, turn = turns[0]
            if turn.done() or waiting_id not in self._waiting:
                turns.popleft()
                continue
            if self.going_on >= self._capacity:
                return
            turns.popleft()
            self._waiting.discard(waiting_id)
            turn.set_result(None)
