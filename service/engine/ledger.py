"""The lease ledger: which worker session holds which run, under which lease.

The bottom of the engine's run handling. A session's ``held`` maps each run
handed to it to its lease id (0 while the claim is in flight: the dispatcher
reserves the slot when it starts the claim); the ledger adds the reverse map,
run to session, and is the one place that lets a run go. Letting go frees the
worker's slot (``slot_freed``: the dispatcher's next pass) and drops the run's
in-memory limits (``released``) together, whoever lets go: a command that
ended the run, a lost lease, a cancellation, a disconnected worker.
"""

from __future__ import annotations

from collections.abc import Callable

from stepd.server.engine.commands import CommandResult, CommandStatus
from stepd.server.engine.sessions import Cancellation, WorkerSession
from stepd.server.engine.validation import shown


class LeaseLedger:
    """The runs that worker sessions of this process hold, and their leases."""

    def __init__(self, slot_freed: Callable[[], None], released: Callable[[str], None]) -> None:
        self._slot_freed = slot_freed
        self._released = released
        self._holders: dict[str, WorkerSession] = {}

    def holder(self, run_id: str) -> WorkerSession | None:
        """The session that holds ``run_id`` here, if any."""
        return self._holders.get(run_id)

    @staticmethod
    def holds(session: WorkerSession, run_id: str, lease_id: int) -> bool:
        """Whether ``session`` holds ``run_id`` under ``lease_id`` (a claim in
        flight holds no lease)."""
        return lease_id != 0 and session.held.get(run_id) == lease_id

    def hold(self, session: WorkerSession, run_id: str, lease_id: int) -> None:
        """``session`` claimed ``run_id`` under ``lease_id``."""
        session.held[run_id] = lease_id
        self._holders[run_id] = session

    def give_up_claim(self, session: WorkerSession, run_id: str) -> None:
        """A claim for ``session`` took nothing (or came too late): free its slot."""
        session.drop(run_id)
        self._slot_freed()

    def let_go(self, session: WorkerSession, run_id: str) -> None:
        """``session`` no longer holds ``run_id`` (ended, suspended, given back)."""
        self._released(run_id)
        if session.drop(run_id) is not None:
            self._slot_freed()
        if self._holders.get(run_id) is session:
            del self._holders[run_id]

    def lease_lost(
        self, command_id: int, run_id: str, session: WorkerSession | None = None
    ) -> CommandResult:
        """The answer to a command whose lease is gone; ``session`` lets the run go."""
        if session is not None:
            self.let_go(session, run_id)
        return CommandResult(
            command_id,
            CommandStatus.LEASE_LOST,
            f"this worker no longer holds run {shown(run_id)} (cancelled, finished or re-queued)",
        )

    def take_back(self, run_id: str, reason: str) -> None:
        """The run ended without its worker: let it go there and tell the worker
        to stop it, for ``reason``."""
        session = self._holders.pop(run_id, None)
        self._released(run_id)
        if session is not None:
            lease_id = session.drop(run_id) or 0
            session.send(Cancellation(run_id, lease_id, reason))
            self._slot_freed()

    def clear(self, session: WorkerSession) -> list[tuple[str, int]]:
        """``session`` ended: let go of everything it held; return the (run, lease)
        pairs it held under a lease (claims in flight give up on their own)."""
        held = [(run_id, lease) for run_id, lease in session.held.items() if lease]
        session.drop_all()
        for run_id, _ in held:
            self._released(run_id)
            if self._holders.get(run_id) is session:
                del self._holders[run_id]
        return held
