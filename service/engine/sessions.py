"""A connected worker's stream, as the engine sees it."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stepd.server.domain import ClaimedRun, WorkflowLimits
from stepd.server.engine.command_order import RunOrder
from stepd.server.engine.commands import CommandResult
from stepd.server.engine.errors import EngineError

#: How long a worker's slot stays taken, in seconds, until runs handed out say
#: (``WorkerSession.slot_time``), and the weight of each new one in the average.
_FIRST_SLOT_TIME = 0.05
_SLOT_TIME_WEIGHT = 0.05


@dataclass(frozen=True, slots=True)
class Cancellation:
    """Tell the worker to stop executing a run it holds."""

    run_id: str
    lease_id: int
    reason: str


Outgoing = ClaimedRun | CommandResult | Cancellation


class WorkerSession:
    """One PollTask stream: what the worker serves, holds, and is sent next.

    ``held`` maps each run handed to (or being claimed for) this worker to its
    lease id (0 while the claim is in flight). It counts against ``capacity``,
    except for up to ``early_capacity`` runs handed out with a sleep met early
    (``wait_out``), each until the sleep's time. Outgoing items are queued and
    drained in batches, so one stream message carries everything that became
    ready meanwhile.
    """

    def __init__(
        self,
        worker_id: str,
        identity: str,
        serves: frozenset[tuple[str, str]],
        capacity: int,
        limits: Mapping[tuple[str, str], WorkflowLimits] | None = None,
        max_cached_runs: int = 0,
        pinnable: Callable[[str, str], bool] | None = None,
        connect_time: int = 0,
        early_capacity: int = 0,
    ) -> None:
        self.worker_id = worker_id
        # This stream's own id (a worker id may reconnect), and when it connected
        # (epoch ms, the engine's clock): what ListWorkers shows.
        self.session_id = uuid.uuid4().hex[:16]
        self.connect_time = connect_time
        # Whether a run stored without a version may be pinned to one this
        # worker serves (not to a retired version).
        self._pinnable = pinnable
        self.identity = identity
        self.serves = serves
        # What the hello declared per served version (execution timeout, journal limit).
        self.limits: Mapping[tuple[str, str], WorkflowLimits] = limits or {}
        # The ready queues this worker draws from, in a fixed order that the
        # dispatcher rotates through so that no workflow's backlog starves another.
        self.queue_keys: tuple[tuple[str, str], ...] = tuple(
            sorted({key for name, version in serves for key in ((name, version), (name, ""))})
        )
        self.queue_key_set = frozenset(self.queue_keys)
        self.next_queue = 0
        # Each workflow's versions served here, greatest first (see newest_version).
        by_name: dict[str, list[str]] = {}
        for name, version in serves:
            by_name.setdefault(name, []).append(version)
        self._versions_of = {
            name: sorted(versions, key=_version_order, reverse=True)
            for name, versions in by_name.items()
        }
        self.capacity = capacity
        # How many suspended runs the worker keeps live (0: no continuations).
        self.max_cached_runs = max_cached_runs
        # Woken runs parked on this worker, offered to it before anything else:
        # (run_id, (workflow name, version)).
        self.continuations: deque[tuple[str, tuple[str, str]]] = deque()
        self.held: dict[str, int] = {}
        # The held runs (and their lease) with a step record answered DUPLICATE:
        # an end sent with ``if_steps_recorded`` is refused for them.
        self.duplicate_records: dict[str, int] = {}
        # What of each run is being applied, by run: the order its commands
        # apply in, across messages too (``command_order.py``).
        self.applying: dict[str, RunOrder] = {}
        # How many held runs may wait out a sleep met early beside the capacity;
        # those that do count against no slot until their sleep's time, and leave
        # their slot to new runs only until shortly before (``wait_out``).
        self.early_capacity = early_capacity
        self._until_due = _Until()
        self._until_reserved = _Until()
        # When each other held run took its slot, and how long a slot stays taken
        # (a moving average, seconds).
        self._taken_at: dict[str, float] = {}
        self.slot_time = _FIRST_SLOT_TIME
        self.closed = False
        # Why the server ended the stream, when it did (None: the worker ended it).
        self.end_error: EngineError | None = None
        self.draining = False
        self.last_seen = time.monotonic()
        self.suspect_since: float | None = None
        self.leases_extended_at = self.last_seen
        self._outbox: list[Outgoing] = []
        self._wakeup = asyncio.Event()

    def newest_version(self, name: str) -> str:
        """The version of ``name`` this worker serves (the greatest, if several) that
        a run stored without a version may be pinned to; "" when there is none."""
        pinnable = self._pinnable
        for version in self._versions_of.get(name, ()):
            if pinnable is None or pinnable(name, version):
                return version
        return ""

    @property
    def lease_owner(self) -> str:
        """How leases name this worker: its identity, and its unique id."""
        return f"{self.identity} ({self.worker_id})"

    @property
    def free_slots(self) -> int:
        """How many more runs that already started (woken, put back) this worker can
        take now."""
        if self.closed or self.draining or self.suspect:
            return 0
        return self.capacity - len(self.held) + self._until_due.count()

    @property
    def room_for_new(self) -> int:
        """How many more runs of any kind this worker can take now: the free slots
        but those kept for runs met early whose time is near."""
        if self.closed or self.draining or self.suspect:
            return 0
        return self.capacity - len(self.held) + self._until_reserved.count()

    @property
    def waiting_out(self) -> int:
        """How many held runs wait out a sleep met early and count against no slot."""
        return self._until_due.count()

    def reserve(self, run_id: str) -> None:
        """Take a slot for ``run_id``, about to be claimed for this worker."""
        self.held[run_id] = 0
        self._taken_at[run_id] = time.monotonic()

    def wait_out(self, run_id: str, seconds: float) -> bool:
        """Let held run ``run_id``, handed out with a sleep met ``seconds`` before its
        time, count against the early capacity instead of a slot until then: the
        worker waits the sleep out without running the run's code. New runs may
        have its slot only until twice ``slot_time`` before then, so that one is
        likely free again by the time. False when it does not: no room beside the
        capacity, or the run is not held."""
        until_due = self._until_due
        if run_id not in self.held or until_due.count() >= self.early_capacity:
            return False
        self._taken_at.pop(run_id, None)
        now = time.monotonic()
        until_due.add(run_id, now + seconds)
        reserve_at = now + seconds - 2 * self.slot_time
        if reserve_at > now:
            self._until_reserved.add(run_id, reserve_at)
        return True

    def drop(self, run_id: str) -> int | None:
        """Stop holding ``run_id``: its lease id (0: a claim in flight), None when it
        was not held."""
        self._until_due.discard(run_id)
        self._until_reserved.discard(run_id)
        taken_at = self._taken_at.pop(run_id, None)
        if taken_at is not None:
            self.slot_time += (time.monotonic() - taken_at - self.slot_time) * _SLOT_TIME_WEIGHT
        self.duplicate_records.pop(run_id, None)
        return self.held.pop(run_id, None)

    def drop_all(self) -> None:
        """Stop holding every run."""
        self._until_due.clear()
        self._until_reserved.clear()
        self._taken_at.clear()
        self.duplicate_records.clear()
        self.held.clear()

    def has_room_for_continuation(self) -> bool:
        """Whether one more woken run can go to this worker at its next dispatch pass."""
        return self.free_slots > len(self.continuations)

    @property
    def suspect(self) -> bool:
        """True while the worker has sent nothing since it failed to report a step
        attempt in time (its event loop may be blocked): it gets no new runs."""
        return self.suspect_since is not None and self.last_seen <= self.suspect_since

    def mark_suspect(self) -> None:
        """Give the worker no new runs until it sends something again."""
        self.suspect_since = time.monotonic()

    def touch(self) -> bool:
        """Note that the worker just sent something (it is alive); True when that
        cleared a suspicion (it may take runs again)."""
        was_suspect = self.suspect
        self.last_seen = time.monotonic()
        if was_suspect:
            self.suspect_since = None
        return was_suspect

    def excuse(self, seconds: float) -> None:
        """The server did not run for ``seconds`` (paused): that silence is not the
        worker's, and its stored leases are extended at the next lease check."""
        self.last_seen = min(self.last_seen + seconds, time.monotonic())
        if self.suspect_since is not None:
            self.suspect_since += seconds
        self.leases_extended_at = -math.inf

    def silent_for(self) -> float:
        """Seconds since the worker last sent anything."""
        return time.monotonic() - self.last_seen

    def send(self, item: Outgoing) -> None:
        """Queue an item for the worker (dropped once the session is closed)."""
        if not self.closed:
            self._outbox.append(item)
            self._wakeup.set()

    async def next_batch(self) -> list[Outgoing] | None:
        """Wait for queued items and return them all; None once closed."""
        while not self._outbox:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        batch, self._outbox = self._outbox, []
        return batch

    def close(self, error: EngineError | None = None) -> None:
        """Stop sending; the stream ends after the current batch, with ``error``'s
        status when the server ends it for a reason (the first reason given wins)."""
        if error is not None and self.end_error is None and not self.closed:
            self.end_error = error
        self.closed = True
        self._wakeup.set()


class _Until:
    """Runs that count as not holding a slot, each until a monotonic time."""

    __slots__ = ("_next", "_until")

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._next = math.inf  # the earliest of those times

    def count(self) -> int:
        """How many there are now (those whose time came are dropped)."""
        until = self._until
        if until and (now := time.monotonic()) >= self._next:
            for run_id in [run_id for run_id, end in until.items() if end <= now]:
                del until[run_id]
            self._next = min(until.values(), default=math.inf)
        return len(until)

    def add(self, run_id: str, end: float) -> None:
        """``run_id`` counts until ``end``."""
        self._until[run_id] = end
        self._next = min(self._next, end)

    def discard(self, run_id: str) -> None:
        """``run_id`` no longer counts."""
        self._until.pop(run_id, None)

    def clear(self) -> None:
        """None counts any more."""
        self._until.clear()
        self._next = math.inf


def _version_order(version: str) -> tuple[int, int, str]:
    """Numeric versions by number ("10" after "9"), then other names."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
