"""Matching ready runs to connected workers, never past their capacity.

Ready runs wait in memory, in one FIFO per (workflow, version); version ""
means "any version of the workflow". Only queues that hold runs are kept, and a
pass looks only at those a worker draws from, so its cost does not grow with
the number of versions registered or served. The store's claim (a conditional
PENDING -> RUNNING write) is what makes a hand-out final, so a run that sits in
two queues, or was cancelled meanwhile, is still handed out at most once.
Nothing here polls the database: a dispatch pass runs when a run becomes
ready or a worker gets room. (Replicas on PostgreSQL also queue runs made
ready on other replicas, and poll for them when idle: ``replicas.py``.)
Runs with a priority or a concurrency key wait in ranked queues instead
(``priorities.py``); while none is queued the pass never looks at them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sized
from typing import Any

from stepd.server.engine.priorities import RankedQueue
from stepd.server.engine.sessions import WorkerSession

log = logging.getLogger("stepd.dispatch")

QueueKey = tuple[str, str]
#: Claims a run for a session: (session, run_id, (workflow name, version the
#: session serves it as), version to pin a run stored without one to ("" when
#: the run has its version)).
ClaimFn = Callable[[WorkerSession, str, QueueKey, str], Coroutine[Any, Any, None]]


class Dispatcher:
    """Ready queues plus the set of worker sessions, and the pass that pairs them."""

    def __init__(self, claim: ClaimFn) -> None:
        self._claim = claim
        self._queues: dict[QueueKey, deque[str]] = {}
        # Runs that already started (woken from a wait, or re-queued) go first:
        # a run that waited should resume promptly, not behind every new run.
        self._resumed: dict[QueueKey, deque[str]] = {}
        # Runs with a priority other than 0, or a fairness (concurrency) key.
        self._ranked: dict[QueueKey, RankedQueue] = {}
        self._plain_turn = False  # at priority 0: plain queues and ranked ones alternate
        # Runs held for non-determinism, per queue, and the workers that refused
        # each (held it): a held run goes only to a worker that has not.
        self._held: dict[QueueKey, dict[str, None]] = {}
        self._refused: dict[str, set[str]] = {}
        self._sessions: list[WorkerSession] = []
        self._rotation = itertools.count()
        self._pending_pass = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Runs put back after a fault, each waiting for its delay (``push_later``).
        self._later: set[asyncio.TimerHandle] = set()
        # The priority and concurrency key of ranked runs waiting here to be handed
        # out, for putting them back ranked (``unstick``, ``push_later``).
        self._ranks: dict[str, tuple[int, str | None]] = {}

    # -- ready runs --------------------------------------------------------

    def push(
        self,
        workflow_name: str,
        version: str,
        run_id: str,
        *,
        resumed: bool = False,
        priority: int = 0,
        fair_key: str | None = None,
    ) -> None:
        """Make a run ready for workers serving (workflow_name, version); a
        ``resumed`` run is handed out before runs that have not started. A run
        with a ``priority`` or a ``fair_key`` (its concurrency key) is ranked."""
        if priority or fair_key is not None:
            self._ranks[run_id] = (priority, fair_key)
            ranked = self._ranked.get((workflow_name, version))
            if ranked is None:
                ranked = self._ranked[(workflow_name, version)] = RankedQueue()
            ranked.push(run_id, priority, fair_key or "", resumed=resumed)
            self.kick()
            return
        lanes = self._resumed if resumed else self._queues
        lanes.setdefault((workflow_name, version), deque()).append(run_id)
        self.kick()

    def push_later(
        self,
        delay: float,
        workflow_name: str,
        version: str,
        run_id: str,
        *,
        priority: int = 0,
        fair_key: str | None = None,
    ) -> None:
        """Make a run ready as a resumed one after ``delay`` seconds (a run put
        back after a fault of the server backs off); without a ``priority`` or
        ``fair_key``, it keeps the ones it was last made ready with."""
        if not priority and fair_key is None:
            priority, fair_key = self._ranks.get(run_id, (0, None))
        handle: asyncio.TimerHandle | None = None

        def due() -> None:
            if handle is not None:
                self._later.discard(handle)
            self.push(
                workflow_name, version, run_id, resumed=True, priority=priority, fair_key=fair_key
            )

        handle = asyncio.get_running_loop().call_later(delay, due)
        self._later.add(handle)

    def push_to(
        self,
        session: WorkerSession,
        workflow_name: str,
        version: str,
        run_id: str,
        *,
        priority: int = 0,
        fair_key: str | None = None,
    ) -> None:
        """Offer a woken run to one session first (it keeps the run's execution live);
        the caller checked that the session has room for it. The ``priority`` and
        ``fair_key`` are kept for when the session cannot take it after all."""
        if priority or fair_key is not None:
            self._ranks[run_id] = (priority, fair_key)
        session.continuations.append((run_id, (workflow_name, version)))
        self.kick()

    def unstick(self, session: WorkerSession) -> None:
        """The session can no longer take the runs offered to it: queue them for all."""
        while session.continuations:
            run_id, (name, version) = session.continuations.popleft()
            priority, fair_key = self._ranks.get(run_id, (0, None))
            self.push(name, version, run_id, resumed=True, priority=priority, fair_key=fair_key)

    def hold(self, workflow_name: str, version: str, run_id: str, refused_by: str) -> None:
        """Make a held run ready for the workers serving its version, except the
        ones that refused it (``refused_by`` and those before)."""
        self._refused.setdefault(run_id, set()).add(refused_by)
        self._held.setdefault((workflow_name, version), {})[run_id] = None
        self.kick()

    def handed_out(self, run_id: str) -> None:
        """A run was claimed for a worker: its rank is not needed any more (it is
        made ready again with its stored priority)."""
        self._ranks.pop(run_id, None)

    def forget(self, run_id: str) -> None:
        """A run ended: drop what is known of the workers that refused it, and its rank."""
        self._refused.pop(run_id, None)
        self._ranks.pop(run_id, None)

    def ready_count(self) -> int:
        """How many runs wait in the ready queues or for their delay after a fault
        (stale entries included)."""
        queued = sum(len(q) for lanes in (self._queues, self._resumed) for q in lanes.values())
        ranked = sum(len(q) for q in self._ranked.values())
        return queued + ranked + len(self._later)

    def reserve_at_once(
        self, workflow_name: str, version: str, run_id: str
    ) -> tuple[WorkerSession, QueueKey, str] | None:
        """A slot for a run about to be created, when it could go to a worker at
        once: nothing is queued for its workflow and version here and a session
        drawing from them has room for a new run. The slot is reserved for
        ``run_id`` (let it go with the ledger's ``give_up_claim`` unless the run is
        claimed); returned with the session, the key it serves the run as and the
        version to pin it to (as ``_pop_for`` returns them). None: queue it."""
        key = (workflow_name, version)
        lanes = (self._queues, self._resumed, self._ranked, self._held)
        if not self._sessions or any(key in lane for lane in lanes):
            return None
        start = next(self._rotation) % len(self._sessions)
        for session in self._sessions[start:] + self._sessions[:start]:
            if key not in session.queue_key_set or session.continuations:
                continue
            if session.room_for_new <= 0:
                continue
            pin = _pin(session, workflow_name, version)
            if pin is None:
                continue
            session.reserve(run_id)
            return session, (workflow_name, version or pin), pin
        return None

    def serves(self, key: QueueKey) -> bool:
        """Whether a connected worker draws from the queue ``key``."""
        return any(key in session.queue_key_set for session in self._sessions)

    def can_take_now(self, key: QueueKey) -> bool:
        """Whether the workers drawing from ``key`` have room for everything queued
        there (a run just queued included): it is handed out here at once."""
        room = sum(s.room_for_new for s in self._sessions if key in s.queue_key_set)
        queued = sum(len(lanes.get(key, ())) for lanes in (self._queues, self._resumed))
        ranked = self._ranked.get(key)
        return room >= queued + (len(ranked) if ranked is not None else 0)

    def idle_demand(self) -> tuple[list[QueueKey], int]:
        """The queues of workers that have room and nothing queued for them, and
        how many runs those workers can take (what a replica polls the store for)."""
        keys: set[QueueKey] = set()
        slots = 0
        for session in self._sessions:
            free = session.room_for_new
            lanes = (self._queues, self._resumed, self._held, self._ranked)
            if free <= 0 or any(not session.queue_key_set.isdisjoint(lane) for lane in lanes):
                continue
            keys.update(session.queue_keys)
            slots += free
        return sorted(keys), slots

    # -- sessions ------------------------------------------------------------

    def add_session(self, session: WorkerSession) -> None:
        """Start dispatching to a worker."""
        self._sessions.append(session)
        self.kick()

    @property
    def sessions(self) -> list[WorkerSession]:
        """The connected worker sessions."""
        return list(self._sessions)

    def remove_session(self, session: WorkerSession) -> None:
        """Stop dispatching to a worker."""
        if session in self._sessions:
            self._sessions.remove(session)
        self.unstick(session)

    # -- the pass ------------------------------------------------------------

    def kick(self) -> None:
        """Schedule a dispatch pass soon (several kicks share one pass)."""
        if not self._pending_pass:
            self._pending_pass = True
            asyncio.get_running_loop().call_soon(self._dispatch_pass)

    def _dispatch_pass(self) -> None:
        self._pending_pass = False
        if not self._sessions:
            return
        start = next(self._rotation) % len(self._sessions)
        ordered = self._sessions[start:] + self._sessions[:start]
        for session in ordered:
            while session.free_slots > 0:
                popped = self._pop_for(session, new_ok=session.room_for_new > 0)
                if popped is None:
                    break
                run_id, served, pin_version = popped
                session.reserve(run_id)
                task = asyncio.create_task(self._claim(session, run_id, served, pin_version))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _pop_for(
        self, session: WorkerSession, *, new_ok: bool = True
    ) -> tuple[str, QueueKey, str] | None:
        """Take the next ready run for ``session``, visiting its queues in turn;
        return it with the version to pin it to when it has none. Unless ``new_ok``
        (the worker's free slots are kept for runs met early whose time is near),
        only a run that already started: a continuation, or a resumed plain run."""
        if session.continuations:
            run_id, key = session.continuations.popleft()
            return run_id, key, ""
        if not new_ok:
            return self._pop_plain(session, (self._resumed,))
        if self._ranked:  # runs with a priority or a fairness key are ready
            top = self._ranked_top(session)
            if top is not None and (top > 0 or (top == 0 and not self._take_plain_turn())):
                popped = self._pop_ranked(session)
                if popped is not None:
                    return popped
        popped = self._pop_plain(session)
        if popped is not None:
            return popped
        if self._ranked:
            popped = self._pop_ranked(session)
            if popped is not None:
                return popped
        return self._pop_held(session)

    def _take_plain_turn(self) -> bool:
        """At priority 0: whether the plain queues go this time (they alternate
        with the ranked ones)."""
        self._plain_turn = not self._plain_turn
        return self._plain_turn

    def _ranked_top(self, session: WorkerSession) -> int | None:
        """The highest priority ready in the ranked queues ``session`` draws from."""
        tops = [self._ranked[key].top() for key in _drawn_from(self._ranked, session)]
        return max((top for top in tops if top is not None), default=None)

    def _pop_ranked(self, session: WorkerSession) -> tuple[str, QueueKey, str] | None:
        """Take the next run of the highest priority from the ranked queues
        ``session`` draws from (queues tied at it are visited in turn)."""
        while True:
            keys = _drawn_from(self._ranked, session)
            candidates = []
            for key in keys:
                name, version = key
                pin = _pin(session, name, version)
                if pin is None:
                    continue
                top = self._ranked[key].top()
                if top is not None:
                    candidates.append((top, key, pin))
            if not candidates:
                return None
            best = max(top for top, _, _ in candidates)
            tied = [(key, pin) for top, key, pin in candidates if top == best]
            key, pin = tied[session.next_queue % len(tied)]
            session.next_queue += 1
            ranked = self._ranked[key]
            run_id = ranked.pop(session.held)
            if not ranked:
                del self._ranked[key]
            if run_id is not None:
                name, version = key
                return run_id, (name, version or pin), pin

    def _pop_plain(
        self, session: WorkerSession, lane_kinds: tuple[dict[QueueKey, deque[str]], ...] = ()
    ) -> tuple[str, QueueKey, str] | None:
        for lanes in lane_kinds or (self._resumed, self._queues):
            keys = _drawn_from(lanes, session)
            for offset in range(len(keys)):
                index = (session.next_queue + offset) % len(keys)
                key = keys[index]
                queue = lanes[key]
                name, version = key
                pin = _pin(session, name, version)
                if pin is None:
                    continue
                while queue:
                    run_id = queue.popleft()
                    if run_id not in session.held:
                        if not queue:
                            del lanes[key]
                        session.next_queue = _next_workflow(keys, index)
                        return run_id, (name, version or pin), pin
                del lanes[key]
        return None

    def _pop_held(self, session: WorkerSession) -> tuple[str, QueueKey, str] | None:
        for key in _drawn_from(self._held, session):
            held = self._held[key]
            for run_id in held:
                refused = self._refused.get(run_id, ())
                if session.worker_id not in refused and run_id not in session.held:
                    del held[run_id]  # we return at once: the iteration ends here
                    if not held:
                        del self._held[key]
                    return run_id, key, ""
        return None

    async def close(self) -> None:
        """Drop runs waiting for their delay (they are PENDING in the store) and
        wait for claims in flight to settle."""
        for handle in self._later:
            handle.cancel()
        self._later.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _next_workflow(keys: list[QueueKey], index: int) -> int:
    """Where the turn goes after ``keys[index]``: the next queue of another
    workflow (the keys are sorted, so a workflow's versions are adjacent). A
    workflow with runs in several versions, or both stored without a version
    and pinned, takes one turn, not one per version."""
    name = keys[index][0]
    index += 1
    while index < len(keys) and keys[index][0] == name:
        index += 1
    return index


def _drawn_from(lanes: Mapping[QueueKey, Sized], session: WorkerSession) -> list[QueueKey]:
    """The queues of ``lanes`` (only those holding runs are kept) that ``session``
    draws from, in a fixed order: whichever of the two is smaller is scanned."""
    keys = session.queue_keys
    if len(keys) <= len(lanes):
        return [key for key in keys if key in lanes]
    served = session.queue_key_set
    return sorted(key for key in lanes if key in served)


def _pin(session: WorkerSession, name: str, version: str) -> str | None:
    """The version ``session`` pins a run of ``name`` stored as ``version`` to: ""
    when the run has a version, else the newest the session serves; None when it
    serves only retired versions of the workflow."""
    if version:
        return ""
    return session.newest_version(name) or None
