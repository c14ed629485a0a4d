"""Plain data shared by the engine and the store: statuses, rows, outcomes.

Nothing here talks to gRPC or to a database. Times are integer milliseconds
since the Unix epoch (UTC) throughout the server.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


def run_fields(run_id: str, workflow: str = "", lease: int = 0) -> dict[str, object]:
    """The ``extra=`` of a log call about a run: the JSON log's run_id, workflow
    and lease fields (``telemetry/json_logs.py``)."""
    fields: dict[str, object] = {"run_id": run_id}
    if workflow:
        fields["workflow"] = workflow
    if lease:
        fields["lease"] = lease
    return fields


def now_ms() -> int:
    """Return the current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class RunStatus(enum.StrEnum):
    """A run's status, stored as its lower-case name."""

    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for statuses a run never leaves."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class StatusMove:
    """One move of the run state machine (``engine/transitions.py``): from any of
    ``sources`` to ``target``. The store applies it as a guarded write."""

    sources: frozenset[RunStatus]
    target: RunStatus


class FailureReason(enum.StrEnum):
    """Why a failed run failed, stored as its lower-case name."""

    WORKFLOW_ERROR = "workflow_error"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    EXECUTION_TIMEOUT = "execution_timeout"
    MAX_ENTRIES_EXCEEDED = "max_entries_exceeded"
    SERVER_ERROR = "server_error"
    JOURNAL_TOO_LARGE = "journal_too_large"


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """An error raised by workflow or step code."""

    type: str
    message: str
    traceback: str = ""
    step_key: str = ""
    attempt: int = 0


class ConcurrencyStrategy(enum.StrEnum):
    """What a new run does when its key is at the limit, stored as its name."""

    QUEUE = "queue"
    CANCEL_IN_PROGRESS = "cancel_in_progress"
    CANCEL_NEWEST = "cancel_newest"


@dataclass(frozen=True, slots=True)
class ConcurrencySpec:
    """A workflow's concurrency limit: at most ``limit`` active runs per key, the
    key read at ``key_path`` in the run's input; ``name`` is shared by workflows
    that share the limit."""

    name: str
    key_path: str
    limit: int
    strategy: ConcurrencyStrategy = ConcurrencyStrategy.QUEUE


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context: the ``traceparent`` and ``tracestate`` headers
    (both "" when the run is in no trace)."""

    parent: str = ""
    state: str = ""

    def __bool__(self) -> bool:
        return bool(self.parent)


NO_TRACE = TraceContext()


@dataclass(frozen=True, slots=True)
class NewRun:
    """Everything needed to insert a run."""

    run_id: str
    workflow_name: str
    workflow_version: str
    input_json: str
    create_time: int
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    root_run_id: str | None = None
    deadline: int | None = None
    start_time_not_before: int | None = None
    schedule_id: str | None = None
    schedule_time: int | None = None
    detached: bool = False
    # An explicit concurrency key (Trigger's), instead of the one the input gives.
    concurrency_key: str | None = None
    # The W3C trace context the run is in ("" when none).
    trace: TraceContext = NO_TRACE
    # An explicit priority (Trigger's); None: the workflow's default.
    priority: int | None = None
    # An explicit debounce key (Trigger's), instead of the one the input gives.
    debounce_key: str | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as stored."""

    run_id: str
    seq: int
    workflow_name: str
    workflow_version: str
    status: RunStatus
    input_json: str
    result_json: str | None
    error: ErrorDetails | None
    failure_reason: FailureReason | None
    parent_run_id: str | None
    root_run_id: str | None
    idempotency_key: str | None
    create_time: int
    update_time: int
    start_time: int | None
    end_time: int | None
    deadline: int | None
    start_time_not_before: int | None
    dispatch_count: int
    lease_id: int
    lease_owner: str | None
    cancel_reason: str | None
    execution_deadline: int | None = None
    expire_time: int | None = None
    lease_expires_at: int | None = None
    schedule_id: str | None = None
    schedule_time: int | None = None
    # Set while the run is held for non-determinism (a worker's code refused it).
    held_error: ErrorDetails | None = None
    # A child run that outlives its parent.
    detached: bool = False
    # The run started at least one child.
    has_children: bool = False
    # The concurrency limit and key the run counts against (None: no limit), and
    # False while it waits for room under that limit (never handed out then).
    concurrency_name: str | None = None
    concurrency_key: str | None = None
    admitted: bool = True
    # The latest progress the workflow reported (JSON), if any.
    progress_json: str | None = None
    # The W3C trace context the run is in.
    trace: TraceContext = NO_TRACE
    # A run made by ForkRun: the run and step it was forked from.
    forked_from_run_id: str | None = None
    forked_from_step_key: str | None = None
    # How many times RetryRun resumed it.
    retry_count: int = 0
    # Among ready runs, a higher priority is handed out first.
    priority: int = 0
    # The start rate limit and key the run took its turn under (None: none).
    rate_limit: str | None = None
    rate_key: str | None = None
    # The debounce key of a run of a workflow with debounce (None: none).
    debounce_key: str | None = None


@dataclass(frozen=True, slots=True)
class StepRow:
    """One recorded step outcome: a result (JSON) or an error."""

    step_key: str
    attempt: int
    result_json: str | None = None
    error: ErrorDetails | None = None
    start_time: int | None = None
    end_time: int | None = None
    sequence: int = 0
    # A failed attempt that is not the step's outcome (another attempt follows).
    attempt_only: bool = False


@dataclass(frozen=True, slots=True)
class CreateRunOutcome:
    """What create_run did: inserted a new run, or found the key's run."""

    run: RunRecord
    created: bool
    # The trigger was folded into its key's pending debounced run (``run``).
    debounced: bool = False
    # The new run, claimed in the same transaction (``create_run``'s ``claim``).
    claimed: ClaimedRun | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A worker to hand a new run to as it is created: what ``claim_run`` takes."""

    owner: str
    lease_expires_at: int
    version: str = ""
    execution_timeout_ms: int | None = None


class RecordStepStatus(enum.Enum):
    """Outcome of recording a step."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class RecordStepOutcome:
    """What record_step did; ``existing`` is set for DUPLICATE."""

    status: RecordStepStatus
    existing: StepRow | None = None


class WaitKind(enum.StrEnum):
    """What a suspended run waits for, stored as its lower-case name."""

    TIMER = "timer"
    SIGNAL = "signal"
    EVENT = "event"
    HOOK = "hook"
    CHILD = "child"


class WaitStatus(enum.StrEnum):
    """Where one wait stands."""

    OPEN = "open"  # the run waits for it
    MET = "met"  # it happened; it is in the run's journal
    ABANDONED = "abandoned"  # the run suspended again without it


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """One wait a worker names when it suspends a run."""

    wait_key: str
    kind: WaitKind
    fire_time: int | None = None
    # What a signal or event wait waits for: its name.
    target: str | None = None
    # An event wait's match (a JSON object of fields) and when it began.
    match_json: str | None = None
    since_time: int | None = None


@dataclass(frozen=True, slots=True)
class PendingWaitRow:
    """An open wait of a suspended run, as stored."""

    wait_key: str
    kind: WaitKind
    create_time: int
    fire_time: int | None = None
    target: str | None = None  # a signal's or event's name, a child's run id
    match_json: str | None = None


@dataclass(frozen=True, slots=True)
class WaitRow:
    """A met wait, as the journal carries it."""

    wait_key: str
    met_time: int
    payload_json: str | None = None
    timed_out: bool = False
    sequence: int = 0


RUN_EXPIRY_KEY = ""
"""The ``DueTimer.wait_key`` of a run's expiry (its deadline or execution timeout);
wait keys are never empty."""

SLEEP_KEY_PREFIXES = ("sleep:", "retry:")
"""How the worker SDK names the waits that are plain sleeps: ``ctx.sleep`` and
``ctx.sleep_until`` (``sleep:N``) and a step's retry backoff (``retry:KEY:N``).
Only these may be met a little early (``engine/timers.py``): a wait's timeout
(``signal:N:timeout`` and the like) never is."""


def is_sleep_key(wait_key: str) -> bool:
    """Whether ``wait_key`` names a plain sleep (``SLEEP_KEY_PREFIXES``)."""
    return wait_key.startswith(SLEEP_KEY_PREFIXES)


@dataclass(frozen=True, slots=True)
class DueTimer:
    """An open timer wait (or a run's expiry, ``RUN_EXPIRY_KEY``) and when it fires."""

    run_id: str
    wait_key: str
    fire_time: int


@dataclass(frozen=True, slots=True)
class WorkflowLimits:
    """What a worker's hello says about one workflow version's runs."""

    execution_timeout_ms: int | None = None
    max_entries: int | None = None


class SuspendStatus(enum.Enum):
    """Outcome of suspending a run."""

    SUSPENDED = "suspended"
    WOKEN = "woken"  # one of its waits was already met: the run is pending again
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class SuspendOutcome:
    """What suspend_run did, the run after it, and the run's open timers."""

    status: SuspendStatus
    run: RunRecord | None = None
    timers: list[DueTimer] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run handed to a worker under a new lease, with its journal."""

    run: RunRecord
    journal: list[StepRow] = field(default_factory=list)
    waits: list[WaitRow] = field(default_factory=list)
    # The run's hook secret (set by the engine, not stored).
    hook_secret: bytes = b""
    # Non-zero: a continuation of the execution suspended under this lease; the
    # journal and waits are only the entries recorded since.
    continues_lease: int = 0


@dataclass(frozen=True, slots=True)
class RunFilter:
    """ListRuns filters; None means no filter."""

    workflow_name: str | None = None
    statuses: frozenset[RunStatus] | None = None
    parent_run_id: str | None = None
    create_time_after: int | None = None
    create_time_before: int | None = None
    idempotency_key: str | None = None
    schedule_id: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowVersion:
    """A workflow version that some worker has registered."""

    name: str
    version: str
    first_seen: int
    # When an operator retired it (never current again); None while in use.
    retire_time: int | None = None


class HistoryType(enum.StrEnum):
    """The kind of one entry of a run's history."""

    TRIGGERED = "triggered"
    DISPATCHED = "dispatched"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    SUSPENDED = "suspended"
    WAIT_MET = "wait_met"
    SIGNAL_RECEIVED = "signal_received"
    RELEASED = "released"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CUSTOM = "custom"
    HELD = "held"
    CHILD_STARTED = "child_started"
    PROGRESS = "progress"
    RETRIED = "retried"
    FORKED = "forked"
    FORKED_FROM = "forked_from"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of a run's history."""

    time: int
    type: HistoryType
    key: str = ""
    name: str = ""
    payload_json: str | None = None
    error: ErrorDetails | None = None
    attempt: int = 0
    detail: str = ""
    # The API key whose call caused it (a cancel, signal, hook or event), if any.
    actor: str = ""
    attempt_only: bool = False  # a failed attempt the step's retry policy went on from
    # Step entries: when the attempt started and ended, as its worker saw it.
    step_start_time: int | None = None
    step_end_time: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Where a page of a run's history ended: how many entries came before, and
    the last row taken from each table the history is merged from."""

    position: int = 0
    events: int = 0
    steps: int = 0
    attempts: int = 0
    triggered: bool = False  # the TRIGGERED entry was taken
    ended: bool = False  # the COMPLETED or FAILED entry was taken


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Entries of a run's history in order, the cursor after them, and whether
    more entries follow."""

    entries: list[HistoryEntry]
    cursor: HistoryCursor
    more: bool


class SignalStatus(enum.Enum):
    """What sending a signal did."""

    DELIVERED = "delivered"  # a waiting run took it and woke
    BUFFERED = "buffered"  # stored for the run's next wait on that name
    DUPLICATE = "duplicate"  # the request_id was seen before: nothing stored
    UNKNOWN_RUN = "unknown_run"
    FINISHED_RUN = "finished_run"


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    """The outcome of sending a signal, the woken run, and the run's status."""

    status: SignalStatus
    woken: RunRecord | None = None
    run_status: RunStatus | None = None


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What publishing an event did: whether its id was seen, who woke, what started."""

    already_published: bool
    woken: list[RunRecord] = field(default_factory=list)
    # The runs it started (workflows that declare the event as a trigger).
    started: list[RunRecord] = field(default_factory=list)


class HookStatus(enum.Enum):
    """What executing a hook did."""

    DELIVERED = "delivered"  # the run waited on it and woke
    BUFFERED = "buffered"  # kept until the run waits on it
    ALREADY_EXECUTED = "already_executed"
    EXPIRED = "expired"  # the run finished, or stopped waiting (e.g. timed out)
    UNKNOWN_RUN = "unknown_run"


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """The outcome of executing a hook, and the run it woke."""

    status: HookStatus
    woken: RunRecord | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One connected worker stream, as ``ListWorkers`` shows it."""

    session_id: str
    replica_id: str
    worker_id: str
    identity: str
    workflows: tuple[tuple[str, str], ...]
    capacity: int
    runs_held: int
    draining: bool
    connect_time: int
    last_seen: int
