"""The order in which one worker's commands for one run are applied.

A worker may send a run's commands in several messages without waiting for the
answers, and each message is applied on a task of its own. A command that is
not a step record (an end, a suspension, a release, ...) waits for everything
of its run sent before it, and everything sent after it waits for it. Step
records between two such commands do not wait for each other: they are keyed
by step, so several messages of them (the steps of one ``asyncio.gather``) are
applied side by side and share commits.
"""

from __future__ import annotations

import asyncio


class RunOrder:
    """What of one run is being applied: the last command that others wait for,
    and the step records sent after it."""

    __slots__ = ("barrier", "records")

    def __init__(self) -> None:
        self.barrier: asyncio.Future[None] | None = None
        self.records: set[asyncio.Future[None]] = set()


class Turn:
    """One message's commands for one run, placed in the run's order when made
    (made in the order the messages arrived, before anything is awaited)."""

    __slots__ = ("_done", "_order", "_orders", "_run_id", "_waits_for")

    def __init__(self, orders: dict[str, RunOrder], run_id: str, records_only: bool) -> None:
        order = orders.get(run_id)
        if order is None:
            order = orders[run_id] = RunOrder()
        waits_for: list[asyncio.Future[None]] = []
        if order.barrier is not None:
            waits_for.append(order.barrier)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if records_only:
            order.records.add(done)
        else:
            waits_for.extend(order.records)
            order.barrier = done
            order.records = set()
        self._orders = orders
        self._run_id = run_id
        self._order = order
        self._done = done
        self._waits_for = waits_for

    async def wait(self) -> None:
        """Return once what this turn waits for is applied."""
        pending = [future for future in self._waits_for if not future.done()]
        self._waits_for = []
        if pending:
            await asyncio.wait(pending)  # not cancelled with this task: others wait too

    def end(self) -> None:
        """This turn's commands are applied (or never will be): let later ones go."""
        done = self._done
        if done.done():
            return
        done.set_result(None)
        order = self._order
        order.records.discard(done)
        if order.barrier is done:
            order.barrier = None
        if order.barrier is None and not order.records and self._orders.get(self._run_id) is order:
            del self._orders[self._run_id]
