"""Plain data for runs started without a caller: event triggers and cron schedules.

Shared by the engine and the store, like ``stepd.server.domain``. Times are epoch
milliseconds (UTC).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from stepd.server.domain import ConcurrencySpec, RunRecord, RunStatus
from stepd.server.domain_flow import DebounceSpec, RateSpec


class OverlapPolicy(enum.StrEnum):
    """What an occasion does while the schedule's previous run is unfinished."""

    SKIP = "skip"
    ALLOW = "allow"
    CANCEL_PREVIOUS = "cancel_previous"


class CatchupPolicy(enum.StrEnum):
    """What happens to occasions missed while no server was running."""

    SKIP = "skip"
    RUN_ONCE = "run_once"


class ScheduleOrigin(enum.StrEnum):
    """Who manages a schedule: the API, or a workflow's declaration in code."""

    API = "api"
    WORKFLOW = "workflow"


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """When a schedule starts runs, with what input, and how (validated)."""

    cron: str
    time_zone: str = "UTC"
    input_json: str = "null"
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    catchup: CatchupPolicy = CatchupPolicy.SKIP


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule as stored. ``next_time`` is the next occasion to handle."""

    schedule_id: str
    workflow_name: str
    workflow_version: str
    spec: ScheduleSpec
    origin: ScheduleOrigin
    paused: bool
    create_time: int
    update_time: int
    next_time: int
    last_time: int | None = None
    last_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleRunRow:
    """One run a schedule started."""

    run_id: str
    schedule_time: int | None
    status: RunStatus
    create_time: int


@dataclass(frozen=True, slots=True)
class WorkflowDeclaration:
    """What one workflow version a worker serves declares: its event triggers and
    its schedule (None: no schedule)."""

    name: str
    version: str
    event_triggers: tuple[str, ...] = ()
    schedule: ScheduleSpec | None = None
    concurrency: ConcurrencySpec | None = None
    # The priority of runs whose trigger sets none.
    priority: int = 0
    # How often runs may start (None: no limit).
    start_rate: RateSpec | None = None
    # Triggers of one key fold into one run (None: no debounce).
    debounce: DebounceSpec | None = None


class CreateScheduleStatus(enum.Enum):
    """What creating a schedule did."""

    CREATED = "created"
    EXISTS_SAME = "exists_same"  # the id exists with the same settings
    EXISTS_OTHER = "exists_other"  # the id exists with other settings


class FireStatus(enum.Enum):
    """What handling one occasion did."""

    STARTED = "started"  # a run was created (or the occasion's run existed)
    SKIPPED = "skipped"  # the overlap policy (or catch-up) started nothing
    STALE = "stale"  # the schedule moved on, was paused or deleted meanwhile


@dataclass(frozen=True, slots=True)
class FireOutcome:
    """The outcome of handling an occasion, and the run it created."""

    status: FireStatus
    run: RunRecord | None = None
    created: bool = False
