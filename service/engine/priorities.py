"""Priorities and fairness among ready runs.

A run has a priority (``Trigger``'s, else its workflow's default, else 0).
The dispatcher keeps runs of priority 0 without a concurrency key in its plain
FIFO queues (the hot path, unchanged); every other ready run goes into a
``RankedQueue`` per (workflow, version). A ranked queue hands out its highest
priority first; within one priority it serves the runs' *fairness keys*
(their concurrency keys) in turn, oldest first within a key, so a flood of
one key cannot starve the others. The dispatcher compares the best priority
of the ranked queues a worker draws from with the plain queues (priority 0)
and takes the higher; at equal priority 0 it alternates between the two.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Container

from stepd.server.domain_flow import MAX_PRIORITY, MIN_PRIORITY
from stepd.server.engine.errors import InvalidArgument


def check_priority(value: int, where: str) -> int:
    """``value`` when it is a valid priority; InvalidArgument naming ``where`` else."""
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(f"{where} must be from {MIN_PRIORITY} to {MAX_PRIORITY}, got {value}")
    return value


class RankedQueue:
    """Ready run ids by priority (highest first), then fairness key in turn,
    then arrival (a resumed run ahead of the others of its key)."""

    __slots__ = ("_levels", "_order", "_size")

    def __init__(self) -> None:
        # priority -> fairness key -> run ids; keys in the order they are served.
        self._levels: dict[int, dict[str, deque[str]]] = {}
        self._order: list[int] = []  # negated priorities, ascending
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, run_id: str, priority: int, key: str, *, resumed: bool = False) -> None:
        """Queue a run."""
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = {}
            bisect.insort(self._order, -priority)
        lane = level.get(key)
        if lane is None:
            lane = level[key] = deque()
        if resumed:
            lane.appendleft(run_id)
        else:
            lane.append(run_id)
        self._size += 1

    def top(self) -> int | None:
        """The highest priority queued (None: empty)."""
        return -self._order[0] if self._order else None

    def pop(self, skip: Container[str]) -> str | None:
        """Take the next run of the highest priority (runs in ``skip`` are
        dropped: stale entries); None when empty."""
        while self._order:
            priority = -self._order[0]
            level = self._levels[priority]
            key = next(iter(level))
            lane = level.pop(key)
            run_id = lane.popleft()
            self._size -= 1
            if lane:
                level[key] = lane  # to the end: the other keys go first
            elif not level:
                del self._levels[priority]
                self._order.pop(0)
            if run_id not in skip:
                return run_id
        return None
