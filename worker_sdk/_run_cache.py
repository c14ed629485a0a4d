"""The worker's cache of suspended runs kept live (sticky execution).

A run the server suspended is normally unwound and, when it wakes, replayed
from the top of its journal. A worker with room keeps the run's execution
instead, parked at the wait it suspended on, so that a continuation (a run
task with only the entries met since) resumes it without a replay. The cache
is bounded by count; the least recently suspended run is evicted first (its
execution unwinds as it would without the cache). The server learns of an
eviction only when it next offers the run here: the worker then answers
``release_run`` and the run is handed out again in full.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class RunCache(Generic[T]):
    """At most ``size`` items by run id, least recently put first."""

    __slots__ = ("_items", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, T] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._items

    def get(self, run_id: str) -> T | None:
        """The item kept for ``run_id``, if any (its place is unchanged)."""
        return self._items.get(run_id)

    def put(self, run_id: str, item: T) -> list[T]:
        """Keep ``item`` as the most recent; return the items evicted for room."""
        self._items.pop(run_id, None)
        self._items[run_id] = item
        evicted: list[T] = []
        while len(self._items) > self.size:
            evicted.append(self._items.popitem(last=False)[1])
        return evicted

    def pop(self, run_id: str) -> T | None:
        """Take the item kept for ``run_id`` out of the cache."""
        return self._items.pop(run_id, None)

    def clear(self) -> list[T]:
        """Take every item out, oldest first."""
        items = list(self._items.values())
        self._items.clear()
        return items
