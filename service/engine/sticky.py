"""Sticky execution: which worker session keeps a suspended run live.

A worker that declares ``max_cached_runs`` keeps the runs it suspends parked
at their wait. The engine remembers here, in memory only, the session and the
lease each such run was suspended under, and how many journal entries that
worker has seen. When the run wakes it is offered to that session first, as a
continuation carrying only the newer entries. The record is a hint: it is
taken (removed) at the run's next claim whoever claims it, dropped when the
session ends or drains, and lost with the server, and every miss falls back
to a full dispatch. Per session at most ``max_cached_runs`` records are kept,
the oldest dropped first, as the worker's own LRU cache drops them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from stepd.server.engine.sessions import Cancellation, WorkerSession


@dataclass(frozen=True, slots=True)
class Parked:
    """A suspended run kept live by a worker session."""

    session: WorkerSession
    #: The lease the run was suspended under.
    lease_id: int
    #: Journal entries that worker has seen (the count the next ones follow).
    entries: int
    #: The bytes of those entries' payloads (``run_limits.journal_bytes``).
    size: int = 0


class StickyRuns:
    """The parked runs of every connected session."""

    def __init__(self) -> None:
        self._runs: dict[str, Parked] = {}
        self._by_session: dict[WorkerSession, OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def remember(
        self, session: WorkerSession, run_id: str, lease_id: int, entries: int, size: int = 0
    ) -> None:
        """``session`` suspended ``run_id`` under ``lease_id`` and keeps it live
        (having seen ``entries`` journal entries of ``size`` bytes)."""
        if session.max_cached_runs <= 0 or session.closed or session.draining:
            return
        self.take(run_id)
        self._runs[run_id] = Parked(session, lease_id, entries, size)
        parked = self._by_session.setdefault(session, OrderedDict())
        parked[run_id] = None
        while len(parked) > session.max_cached_runs:  # the worker evicted its oldest too
            oldest, _ = parked.popitem(last=False)
            del self._runs[oldest]

    def get(self, run_id: str) -> Parked | None:
        """Where ``run_id`` is parked, if anywhere."""
        return self._runs.get(run_id)

    def take(self, run_id: str) -> Parked | None:
        """Forget where ``run_id`` is parked and return it."""
        parked = self._runs.pop(run_id, None)
        if parked is not None:
            runs = self._by_session.get(parked.session)
            if runs is not None:
                runs.pop(run_id, None)
                if not runs:
                    del self._by_session[parked.session]
        return parked

    def forget_session(self, session: WorkerSession) -> None:
        """The session ended or drains: nothing is parked there any more."""
        for run_id in self._by_session.pop(session, ()):
            del self._runs[run_id]

    def take_for(self, session: WorkerSession, run_id: str) -> Parked | None:
        """At a claim by ``session``: where ``run_id`` was parked if that is
        ``session`` (a continuation); a run parked elsewhere is let go there."""
        parked = self.take(run_id)
        if parked is not None and parked.session is not session:
            self.let_go(run_id, parked, "the run continues on another worker")
            return None
        return parked

    def drop(self, run_id: str, reason: str) -> None:
        """Forget where ``run_id`` is parked and tell that worker to let it go."""
        parked = self.take(run_id)
        if parked is not None:
            self.let_go(run_id, parked, reason)

    @staticmethod
    def let_go(run_id: str, parked: Parked, reason: str) -> None:
        """Tell the worker that parked ``run_id`` to drop its execution: a
        cancellation for the lease it suspended under (the run is not held, so
        no slot changes)."""
        parked.session.send(Cancellation(run_id, parked.lease_id, reason))
