"""The one interface the engine uses to reach durable state.

Every write is one transaction (implementations may group concurrent writes
into one database transaction: group commit). Conditional writes encode the
run state machine's guards: ``release_run``, ``complete_run``, ``fail_run`` and
``cancel_run`` change a run only when it is in one of the sources of the move
the engine passes (``engine/transitions.py``) and, when given, holds
``lease_id``, so a stale or illegal change affects no row and reports None.
Methods say what they do; column names stay below this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from stepd.server.domain import (
    ClaimedRun,
    ClaimRequest,
    ConcurrencySpec,
    CreateRunOutcome,
    DueTimer,
    ErrorDetails,
    FailureReason,
    HistoryCursor,
    HistoryEntry,
    HistoryPage,
    HookOutcome,
    NewRun,
    PendingWaitRow,
    PublishOutcome,
    RecordStepOutcome,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalOutcome,
    StatusMove,
    StepRow,
    SuspendOutcome,
    WaitSpec,
    WorkerInfo,
    WorkflowVersion,
)
from stepd.server.domain_flow import FlowLimitState, FlowSettings
from stepd.server.domain_keys import ApiKeyRecord, PinStatus, RetireStatus
from stepd.server.domain_schedules import (
    CreateScheduleStatus,
    FireOutcome,
    ScheduleRecord,
    ScheduleRunRow,
    ScheduleSpec,
)
from stepd.server.store.children import StartChildOutcome
from stepd.server.store.concurrency import KeyCheck
from stepd.server.store.executor import CommitStats
from stepd.server.store.run_actions import (
    DeadlineChange,
    DeleteStatus,
    ForkOutcome,
    RetryOutcome,
)


class RunConflictError(Exception):
    """A custom run id already exists (and the idempotency key does not match)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class ConcurrencyRefusedError(Exception):
    """A new run was refused: its key is at a ``cancel_newest`` concurrency limit."""


class FlowStore(Protocol):
    """Flow-control settings per workflow (``stepd.server.store.flow``)."""

    async def declare_flow(self, specs: Mapping[str, FlowSettings], now: int) -> None:
        """Store workflows' flow-control settings (empty: none any more)."""

    async def reserve_rate(
        self, name: str, key: str, limit: int, period_ms: int, not_before: int
    ) -> int:
        """Take the earliest turn under a rate limit at or after ``not_before``;
        return when it begins (epoch ms)."""

    async def forget_rate_turns(self, now: int) -> int:
        """Delete rate-limit keys whose next turn would begin by ``now``."""

    async def retake_start_turn(self, run_id: str, now: int) -> RunRecord | None:
        """A run released late takes a new start turn from ``now``; the run."""

    async def flow_overview(self, now: int, limit: int) -> list[FlowLimitState]:
        """Every flow-control limit and what waits under it (at most ``limit``)."""


class ConcurrencyStore(Protocol):
    """Concurrency limits per key (``stepd.server.store.concurrency``)."""

    async def declare_concurrency(
        self, specs: Mapping[str, ConcurrencySpec | None], now: int
    ) -> str | None:
        """Store workflows' limits (None: none any more); an error message, and
        nothing stored, when one limit name would get two settings."""

    async def check_concurrency_key(self, limit_name: str, key: str, now: int) -> KeyCheck:
        """Admit the oldest runs waiting at a key that has room; name the runs a
        newer one cancels (``cancel_in_progress``)."""

    async def concurrency_waiting_keys(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (limit name, key) pairs with runs waiting for room."""

    def on_key_checked(self, listener: Callable[[str, str, KeyCheck], None]) -> None:
        """Call ``listener(limit_name, key, check)`` after a write that ended a run
        under a concurrency limit has committed: the write also checked the run's
        key (``check_concurrency_key``) in its transaction."""

    async def concurrency_queue_position(self, run: RunRecord) -> tuple[int, int, int]:
        """For a waiting run: runs waiting ahead of it, active runs, the limit."""


class ScheduleStore(Protocol):
    """Durable state of runs started without a caller: event triggers, cron
    schedules and delayed starts (``stepd.server.store.schedules``)."""

    async def declare_workflows(
        self,
        triggers: Sequence[tuple[str, str, tuple[str, ...]]],
        schedules: Sequence[tuple[str, str, ScheduleSpec | None, int]],
    ) -> list[ScheduleRecord]:
        """In one transaction, set the event triggers of (name, version) pairs and
        create, update or remove (spec None) the workflows' declared schedules,
        given as (schedule id, workflow name, spec, next occasion). An update
        keeps the cursor unless the cron expression or time zone changed, and
        always keeps the paused flag. Return the schedules now declared."""

    async def create_schedule(
        self, record: ScheduleRecord
    ) -> tuple[CreateScheduleStatus, ScheduleRecord]:
        """Insert a schedule; when its id is taken, say whether the stored one has
        the same settings and return that one."""

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """Return one schedule, or None."""

    async def list_schedules(
        self, workflow_name: str | None, after_id: str | None, limit: int
    ) -> list[ScheduleRecord]:
        """Return up to ``limit`` schedules ordered by id, with ids after
        ``after_id`` when given, of one workflow when given."""

    async def list_schedules_page(
        self, workflow_name: str | None, after_id: str | None, limit: int, max_bytes: int
    ) -> tuple[list[ScheduleRecord], bool]:
        """Like ``list_schedules``, and fewer (at least one) when their inputs pass
        ``max_bytes``; also whether more follow."""

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_time: int | None
    ) -> ScheduleRecord | None:
        """Pause or resume a schedule, moving its cursor to ``next_time`` when
        given; None when it does not exist."""

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule (its runs stay); False when there was none."""

    async def fire_schedule(
        self, schedule_id: str, expected_next: int, new_next: int, occasion: int | None
    ) -> FireOutcome:
        """Atomically move an unpaused schedule's cursor from ``expected_next`` to
        ``new_next`` and start the run for ``occasion`` (None: none), applying
        the SKIP overlap policy. STALE when the cursor had moved (handled
        already), the schedule is paused or gone. The run's idempotency key is
        derived from (schedule, occasion): one run per occasion."""

    async def trigger_schedule(self, schedule_id: str, request_id: str) -> FireOutcome | None:
        """Start a run of a schedule now (the SKIP overlap policy applies), once
        per request_id; None for an unknown schedule."""

    async def schedule_request_run(self, schedule_id: str, request_id: str) -> RunRecord | None:
        """Return the run a TriggerSchedule with ``request_id`` started, if any
        (also once the schedule was deleted)."""

    async def schedule_runs(self, schedule_id: str, limit: int) -> list[ScheduleRunRow]:
        """Return the runs a schedule started most recently, newest first."""

    async def due_schedules(self, until: int, limit: int) -> list[DueTimer]:
        """Return unpaused schedules whose next occasion is at or before ``until``
        as timers keyed (schedule id, str(occasion)), soonest first."""

    async def delayed_starts(self, after: int, until: int, limit: int) -> list[DueTimer]:
        """Return PENDING runs whose start time is in (after, until] as timers
        keyed (run id, "start"), soonest first."""


class KeyStore(Protocol):
    """API keys (``stepd.server.store.api_keys``): only their hashes are stored."""

    async def create_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new key."""

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        """Revoke a key (keeping an earlier revoke time); None when there is none."""

    async def api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones included, by key id."""


class VersionStore(Protocol):
    """Pinned and retired workflow versions (``stepd.server.store.versions``)."""

    async def pin_workflow_version(self, name: str, version: str, now: int) -> PinStatus:
        """Make a registered, unretired version the workflow's current one."""

    async def unpin_workflow_version(self, name: str) -> bool:
        """Remove a workflow's pin; False when it had none."""

    async def retire_workflow_version(self, name: str, version: str, now: int) -> RetireStatus:
        """Retire a version (never current again); refused while it is pinned."""

    async def workflow_pins(self) -> dict[str, str]:
        """Every pin: workflow name -> version."""


class RunActionStore(Protocol):
    """Operator actions on whole runs (``stepd.server.store.run_actions``) and the
    connected workers of every replica (``stepd.server.store.workers``)."""

    async def retry_run(
        self,
        run_id: str,
        move: StatusMove,
        deadline: DeadlineChange,
        *,
        reason: str = "",
        actor: str = "",
    ) -> RetryOutcome:
        """Move a finished run (among ``move.sources``) back to PENDING with its
        journal, less the outcome, failed attempts and backoffs of the step that
        failed it (kept in the history, as is the run's failure); record who
        (``actor``) in the history. DEADLINE_PASSED when the deadline it would
        keep has passed."""

    async def fork_run(
        self, source_run_id: str, step_key: str, new: NewRun, *, actor: str = ""
    ) -> ForkOutcome:
        """Create ``new`` with a copy of the source run's journal up to and
        including the outcome of ``step_key``, linked to the source (its
        ``forked_from_*`` and both runs' histories). With an idempotency key
        that names a run, return that run (EXISTED)."""

    async def delete_run(self, run_id: str) -> tuple[DeleteStatus, RunStatus | None]:
        """Delete a finished run with its journal, waits, signals, hooks and
        history; an unfinished run is kept (NOT_FINISHED)."""

    async def delete_expired_runs(self, ended_before: int, limit: int) -> int:
        """Delete up to ``limit`` finished runs that ended before ``ended_before``,
        oldest first, as ``delete_run`` does; return how many."""

    async def matching_runs(
        self, run_filter: RunFilter, before_seq: int | None, limit: int
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` runs the filter selects, as (seq, run id), newest first,
        with seq < ``before_seq`` when given."""

    async def count_matching_runs(self, run_filter: RunFilter) -> int:
        """How many runs the filter selects."""

    async def save_workers(
        self, replica_id: str, workers: Sequence[WorkerInfo], stale_before: int
    ) -> None:
        """Replace a replica's rows of connected workers with ``workers``; drop
        every row not refreshed since ``stale_before``."""

    async def workers_since(self, since: int) -> list[WorkerInfo]:
        """Every replica's connected workers refreshed at or after ``since``."""


class Store(
    ScheduleStore, KeyStore, VersionStore, RunActionStore, ConcurrencyStore, FlowStore, Protocol
):
    """Durable state of runs, journals and the workflow registry."""

    @property
    def ordered_writes(self) -> bool:
        """True when writes about one run commit in the order submitted."""
        ...

    @property
    def commit_stats(self) -> CommitStats:
        """Counters of the commits and writes made so far."""
        ...

    async def open(self) -> None:
        """Connect, apply pending migrations, start the writer."""

    async def close(self) -> None:
        """Flush pending writes and disconnect."""

    # -- writes -----------------------------------------------------------

    async def create_run(self, new: NewRun, claim: ClaimRequest | None = None) -> CreateRunOutcome:
        """Insert a PENDING run.

        With an idempotency key that already names a run, return that run
        with ``created=False``. A run_id that already exists without the
        same idempotency key raises RunConflictError.

        With ``claim``, a new run that may start at once (admitted, no start
        time ahead, no start rate limit, no priority or concurrency key: nothing
        would queue it) is also claimed for that worker, as ``claim_run`` would,
        in the same transaction: ``claimed`` holds it.
        """

    async def claim_run(
        self,
        run_id: str,
        owner: str,
        lease_expires_at: int,
        version: str = "",
        execution_timeout_ms: int | None = None,
        continues_lease: int = 0,
        known_entries: int = 0,
    ) -> ClaimedRun | None:
        """Move a PENDING run to RUNNING under a new lease and return it.

        With ``continues_lease`` (the lease the claiming worker suspended the run
        under, ``known_entries`` the journal entries it has seen) and when the new
        lease directly follows it, the run comes back as a continuation: only the
        entries recorded since, numbered after ``known_entries``. Otherwise the
        whole journal.

        The first claim starts the run's execution timeout when
        ``execution_timeout_ms`` is given (``execution_deadline``), and sets its
        ``expire_time`` to the earlier of that and its deadline.

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
        row and changes nothing. A failed attempt that is not the step's
        outcome (``step.attempt_only``) is stored apart, once per
        (run_id, step_key, attempt), and is part of the journal too.
        """

    async def release_run(self, run_id: str, move: StatusMove, lease_id: int) -> RunRecord | None:
        """Give a run held under ``lease_id`` back to the queue (``move`` leads to
        PENDING) and clear its lease's owner; None when the guard did not match."""

    async def complete_run(
        self, run_id: str, move: StatusMove, lease_id: int, result_json: str
    ) -> RunRecord | None:
        """End a run held under ``lease_id`` with its result (``move`` leads to
        COMPLETED); None when the guard did not match."""

    async def fail_run(
        self,
        run_id: str,
        move: StatusMove,
        error: ErrorDetails,
        reason: FailureReason,
        *,
        lease_id: int | None = None,
    ) -> RunRecord | None:
        """End a run with ``error`` for ``reason`` (``move`` leads to FAILED): the
        one held under ``lease_id`` when given, else wherever it stands among
        ``move.sources`` (its deadline passed). None when the guard did not match."""

    async def cancel_run(
        self, run_id: str, move: StatusMove, reason: str, *, actor: str = ""
    ) -> RunRecord | None:
        """Cancel a run wherever it stands among ``move.sources`` (``move`` leads to
        CANCELLED), with ``reason``; ``actor`` (an API key id) is recorded on the
        history entry. None when the guard did not match."""

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

    async def fire_timer_early(self, run_id: str, wait_key: str) -> tuple[bool, RunRecord | None]:
        """Meet an open timer wait before its time, recording its fire time as the
        time it was met, only when it is its run's only open wait; wake its run if
        SUSPENDED. Returns (whether it was met, the woken run or None)."""

    async def send_signal(
        self,
        run_id: str,
        name: str,
        payload_json: str,
        request_id: str | None,
        *,
        actor: str = "",
    ) -> SignalOutcome:
        """Buffer a signal for an unfinished run and hand it to the run's oldest
        open wait for that name (meeting it, abandoning the run's other waits
        and waking the run). A request_id seen before for the run stores nothing.
        ``actor`` (an API key id) is recorded in the run's history."""

    async def execute_hook(
        self, run_id: str, wait_key: str, token_hash: str, payload_json: str, *, actor: str = ""
    ) -> HookOutcome:
        """Execute a hook once: deliver to the run waiting on it, or keep it
        until the run waits; ALREADY_EXECUTED for a second execution; EXPIRED
        when the run finished or stopped waiting on it. ``actor`` (an API key
        id) is recorded on the history entry of the delivery."""

    async def server_secret(self, name: str) -> bytes:
        """A per-database secret created by the migrations."""

    async def publish_event(
        self,
        event_id: str,
        name: str,
        payload_json: str,
        *,
        actor: str = "",
        current_versions: Mapping[str, str] | None = None,
    ) -> PublishOutcome:
        """Store an event (once per event_id) and meet every open wait for it
        that began before it and whose match fits, waking those runs; start one
        run (input: the payload) of each workflow whose current version declares
        the event as a trigger, once per (event_id, workflow).

        ``current_versions`` are the current versions the engine knows (see
        ``schedules.start_subscribed``); ``actor`` (an API key id) is recorded
        on the history entries of the runs it wakes."""

    async def record_event(
        self,
        run_id: str,
        lease_id: int,
        key: str,
        name: str,
        payload_json: str,
        *,
        progress: bool = False,
    ) -> bool:
        """Append a custom history entry once per key (``progress``: a progress entry,
        which also becomes the run's progress when new); False when the run is not
        RUNNING under ``lease_id``."""

    def on_history(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(run_id)`` after each committed write that may have added
        to a run's history."""

    async def pending_waits(self, run_id: str) -> list[PendingWaitRow]:
        """The open waits of a run, oldest first."""

    async def abandon_waits(self, run_id: str) -> int:
        """Mark a finished run's open waits abandoned; return how many."""

    async def extend_leases(self, owner: str, run_ids: Iterable[str], expires_at: int) -> int:
        """Set lease_expires_at of the RUNNING runs among ``run_ids`` that ``owner``
        holds; return how many rows changed."""

    async def start_child(
        self, parent_run_id: str, lease_id: int, child_key: str, new: NewRun
    ) -> StartChildOutcome:
        """In one transaction, under the parent's lease: create the child run ``new``
        (nothing when it exists: its id is derived from the parent and the key) and
        record the parent's step-namespace entry ``child_key`` with the child's id.
        RECORDED_BEFORE (with the stored entry) when the entry exists."""

    async def deliver_child(self, child: RunRecord) -> RunRecord | None:
        """Meet the parent's open wait on ``child`` (which ended) with its outcome;
        return the parent when that woke it."""

    async def hold_run(self, run_id: str, lease_id: int, error: ErrorDetails) -> RunRecord | None:
        """Move a RUNNING run under ``lease_id`` back to PENDING, held with ``error``
        (kept on the run until a worker claims it, and in its history)."""

    # -- reads ------------------------------------------------------------

    async def unfinished_children(self, parent_run_id: str) -> list[RunRecord]:
        """A run's children that have not ended and are not detached."""

    async def child_recovery(self) -> tuple[list[RunRecord], list[str]]:
        """Ended children whose parent has an open wait on them, and ended runs
        that still have unfinished attached children (a crash came between)."""

    async def ready_runs(self, served: Sequence[tuple[str, str]], limit: int) -> list[RunRecord]:
        """Return up to ``limit`` PENDING runs due to start whose (workflow, version)
        is in ``served`` (version "" matches any), oldest first, skipping rows
        another transaction has locked (a replica's poll for ready work)."""

    async def ended_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Return those of ``run_ids`` that reached a terminal status."""

    async def expired_leases(self, now: int, limit: int) -> list[RunRecord]:
        """Return up to ``limit`` RUNNING runs whose lease_expires_at is before
        ``now``, soonest-expired first."""

    async def run_history(self, run_id: str) -> list[HistoryEntry] | None:
        """Return a run's whole history, oldest first; None for an unknown run."""

    async def run_history_page(
        self, run_id: str, cursor: HistoryCursor, limit: int, max_bytes: int
    ) -> HistoryPage | None:
        """Return up to ``limit`` entries of a run's history after ``cursor``, fewer
        when their payloads pass ``max_bytes`` (at least one); None for an unknown
        run. Reads only the entries it returns (and one more per table)."""

    async def due_timers(self, until: int, limit: int) -> list[DueTimer]:
        """Return up to ``limit`` open timer waits firing at or before ``until``."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        """Return one run, or None."""

    async def list_runs(
        self, run_filter: RunFilter, limit: int, before_seq: int | None
    ) -> list[RunRecord]:
        """Return up to ``limit`` runs matching the filter, newest (highest seq) first,
        only those with seq < before_seq when it is given."""

    async def list_runs_page(
        self,
        run_filter: RunFilter,
        limit: int,
        before_seq: int | None,
        *,
        payloads: bool,
        max_bytes: int,
    ) -> tuple[list[RunRecord], bool]:
        """Return up to ``limit`` matching runs, newest first, with seq < before_seq,
        and whether more follow. Without ``payloads`` their input, result and error
        traceback are left out; with them, the page stops before the run whose
        payloads would pass ``max_bytes`` (at least one run)."""

    async def load_journal(self, run_id: str) -> list[StepRow]:
        """Return a run's recorded steps in recording order."""

    async def runs_in_status(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        """Return every run in one of the statuses (used for recovery at start)."""

    async def workflow_versions(self) -> list[WorkflowVersion]:
        """Return every registered workflow version, oldest first."""

    async def check_storage(self) -> None:
        """Open a write transaction and end it, writing nothing: raises
        ``StoreUnavailableError`` when the database cannot be reached or locked
        for writing now (the health probe)."""
