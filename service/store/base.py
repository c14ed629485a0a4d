"""The one interface the engine uses to reach durable state.

Every write is one transaction (implementations may group concurrent writes
into one database transaction: group commit). Conditional writes encode the
run state machine's guards: ``transition_run`` changes a run only when it is in
one of ``from_statuses`` (and, when given, holds ``lease_id``), so a stale or
illegal change affects no row and reports False.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from service.domain import (
    ClaimedRun,
    CreateRunOutcome,
    DueTimer,
    HistoryEntry,
    HookOutcome,
    NewRun,
    PublishOutcome,
    RecordStepOutcome,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalOutcome,
    StepRow,
    SuspendOutcome,
    WaitSpec,
    WorkflowVersion,
)


class RunConflictError(Exception):
    """A custom run id already exists (and the idempotency key does not match)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class Store(Protocol):
    """Durable state of runs, journals and the workflow registry."""

    async def open(self) -> None:
        """Connect, apply pending migrations, start the writer."""

    async def close(self) -> None:
        """Flush pending writes and disconnect."""

    # -- writes -----------------------------------------------------------

    async def create_run(self, new: NewRun) -> CreateRunOutcome:
        """Insert a PENDING run.

        With an idempotency key that already names a run, return that run
        with ``created=False``. A run_id that already exists without the
        same idempotency key raises RunConflictError.
        """

    async def claim_run(
        self, run_id: str, owner: str, lease_expires_at: int, version: str = ""
    ) -> ClaimedRun | None:
        """Move a PENDING run to RUNNING under a new lease and return it.

        A run stored with workflow version "" (triggered before any worker
        registered the workflow) is pinned to ``version``, the claiming
        worker's.

        Increments dispatch_count; the new lease_id equals the new
        dispatch_count. Sets start_time on the first claim. Loads the
        journal only when the run was dispatched before (a fresh run has
        none). Returns None when the run is not PENDING (someone else took it,
        or it was cancelled).
        """

    async def record_step(self, run_id: str, lease_id: int, step: StepRow) -> RecordStepOutcome:
        """Store a step outcome once per (run_id, step_key).

        Only when the run is RUNNING under ``lease_id``; otherwise LEASE_LOST.
        A second write for the same key returns DUPLICATE with the stored
        row and changes nothing.
        """

    async def transition_run(
        self,
        run_id: str,
        from_statuses: Iterable[RunStatus],
        to_status: RunStatus,
        *,
        lease_id: int | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> RunRecord | None:
        """Set a run's status (and other columns in ``values``) atomically.

        Applies only when the run's status is in ``from_statuses`` and, if
        ``lease_id`` is given, the run's lease_id equals it. Sets update_time;
        sets end_time when ``to_status`` is terminal. Returns the updated run,
        or None when the guard did not match.
        """

    async def register_workflows(self, versions: Iterable[tuple[str, str]]) -> None:
        """Remember (name, version) pairs a worker serves; known pairs are kept."""

    async def suspend_run(
        self, run_id: str, lease_id: int, wait_specs: Sequence[WaitSpec]
    ) -> SuspendOutcome:
        """Move a RUNNING run under ``lease_id`` to SUSPENDED with its waits.

        A wait key the run registered before keeps its first fire_time; open
        waits not named again are abandoned. When a named wait was met
        already, the run goes back to PENDING at once (WOKEN). LEASE_LOST when
        the run is not RUNNING under that lease.
        """

    async def fire_timer(self, run_id: str, wait_key: str) -> RunRecord | None:
        """Mark an open timer wait met and, if its run is SUSPENDED, move it to
        PENDING; return the woken run, else None."""

    async def send_signal(
        self, run_id: str, name: str, payload_json: str, request_id: str | None
    ) -> SignalOutcome:
        """Buffer a signal for an unfinished run and hand it to the run's oldest
        open wait for that name (meeting it, abandoning the run's other waits
        and waking the run). A request_id seen before for the run stores nothing."""

    async def execute_hook(
        self, run_id: str, wait_key: str, token_hash: str, payload_json: str
    ) -> HookOutcome:
        """Execute a hook once: deliver to the run waiting on it, or keep it
        until the run waits; ALREADY_EXECUTED for a second execution; EXPIRED
        when the run finished or stopped waiting on it."""

    async def server_secret(self, name: str) -> bytes:
        """A per-database secret created by the migrations."""

    async def publish_event(self, event_id: str, name: str, payload_json: str) -> PublishOutcome:
        """Store an event (once per event_id) and meet every open wait for it
        that began before it and whose match fits, waking those runs."""

    async def record_event(
        self, run_id: str, lease_id: int, key: str, name: str, payload_json: str
    ) -> bool:
        """Append a custom history entry once per key; False when the run is not
        RUNNING under ``lease_id``."""

    async def abandon_waits(self, run_id: str) -> int:
        """Mark a finished run's open waits abandoned; return how many."""

    async def extend_leases(self, owner: str, run_ids: Iterable[str], expires_at: int) -> int:
        """Set lease_expires_at of the RUNNING runs among ``run_ids`` that ``owner``
        holds; return how many rows changed."""

    # -- reads ------------------------------------------------------------

    async def expired_leases(self, now: int, limit: int) -> list[RunRecord]:
        """Return up to ``limit`` RUNNING runs whose lease_expires_at is before
        ``now``, soonest-expired first."""

    async def run_history(self, run_id: str) -> list[HistoryEntry] | None:
        """Return a run's whole history, oldest first; None for an unknown run."""

    async def due_timers(self, until: int, limit: int) -> list[DueTimer]:
        """Return up to ``limit`` open timer waits firing at or before ``until``."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """Return one run, or None."""

    async def list_runs(
        self, run_filter: RunFilter, limit: int, before_seq: int | None
    ) -> list[RunRecord]:
        """Return up to ``limit`` runs matching the filter, newest (highest seq) first,
        only those with seq < before_seq when it is given."""

    async def load_journal(self, run_id: str) -> list[StepRow]:
        """Return a run's recorded steps in recording order."""

    async def runs_in_status(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        """Return every run in one of the statuses (used for recovery at start)."""

    async def workflow_versions(self) -> list[WorkflowVersion]:
        """Return every registered workflow version, oldest first."""
