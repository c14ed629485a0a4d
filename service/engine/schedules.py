"""Cron schedules and event triggers: starting runs without a caller.

A schedule's next occasion is stored (its cursor). Occasions due within the
timer horizon are event-loop handles (``TimerSchedule``); handling one moves
the cursor and creates the occasion's run in one transaction, with an
idempotency key derived from (schedule, occasion), so an occasion starts at
most one run however often it is handled, also across restarts.

Occasions that passed before this server process started were missed while
no server ran: the catch-up policy says whether they start nothing (SKIP) or
one run for the latest of them (RUN_ONCE). Every later occasion starts a run
(subject to the overlap policy), even when it is handled late.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.config import ServerConfig
from stepd.server.domain import DueTimer, RunRecord
from stepd.server.domain_schedules import (
    CatchupPolicy,
    CreateScheduleStatus,
    FireOutcome,
    FireStatus,
    OverlapPolicy,
    ScheduleOrigin,
    ScheduleRecord,
    ScheduleRunRow,
    ScheduleSpec,
    WorkflowDeclaration,
)
from stepd.server.engine import cron
from stepd.server.engine.errors import (
    AlreadyExists,
    EngineError,
    InvalidArgument,
    NotFound,
)
from stepd.server.engine.payloads import check_json_payload
from stepd.server.engine.registry import WorkflowRegistry
from stepd.server.engine.timers import TimerSchedule
from stepd.server.engine.validation import MAX_ID_LENGTH, MAX_PAGE_BYTES, check_id, shown
from stepd.server.store.base import Store

log = logging.getLogger("stepd.schedules")

#: How many next occasions a schedule shows.
NEXT_OCCASIONS = 5
DEFAULT_RECENT_RUNS = 10
MAX_RECENT_RUNS = 100
#: Most occasions handled in one go for one schedule (a long backlog continues
#: at the next refill).
MAX_BACKLOG = 1000

MakeReady = Callable[[RunRecord], None]
CancelRun = Callable[[str, str], Coroutine[Any, Any, object]]


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """A schedule with its next occasions and, from ``get``, its recent runs."""

    record: ScheduleRecord
    next_times: list[int]
    recent_runs: list[ScheduleRunRow]


class Scheduler:
    """Fires stored schedules and serves the schedule API and workflow declarations.

    ``make_ready`` hands a created run to dispatch; ``cancel`` cancels a run
    (the engine's ``cancel_run``) for the CANCEL_PREVIOUS overlap policy.
    """

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        registry: WorkflowRegistry,
        make_ready: MakeReady,
        cancel: CancelRun,
        horizon_ms: int = 60_000,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._registry = registry
        self._make_ready = make_ready
        self._cancel = cancel
        self.timers = TimerSchedule(
            store, self._fire, horizon_ms, load=store.due_schedules, clock=clock
        )
        self._started_at = clock.now_ms()
        self._declared: dict[tuple[str, str], WorkflowDeclaration] = {}
        self._busy: set[str] = set()
        self._again: set[str] = set()

    def start(self) -> None:
        """Occasions before now were missed; load the due schedules now and on."""
        self._started_at = self._clock.now_ms()
        self.timers.start()

    async def close(self) -> None:
        """Stop firing (the store keeps every schedule's cursor)."""
        await self.timers.close()

    # -- workflow declarations ---------------------------------------------------------

    def check(self, declarations: Sequence[WorkflowDeclaration]) -> None:
        """Reject a hello whose declarations are invalid, naming the field."""
        for i, decl in enumerate(declarations):
            where = f"hello.workflows[{i}]"
            for name in decl.event_triggers:
                if not name.strip() or len(name) > MAX_ID_LENGTH:
                    raise InvalidArgument(
                        f"{where}.event_triggers: event names are 1 to {MAX_ID_LENGTH} "
                        f"characters, got {shown(name)}"
                    )
            if decl.schedule is not None:
                cron.check(decl.schedule.cron, decl.schedule.time_zone, f"{where}.schedule")
                check_json_payload(
                    f"{where}.schedule.input",
                    decl.schedule.input_json,
                    "",
                    self._config.max_payload_bytes,
                )

    async def declare(self, declarations: Sequence[WorkflowDeclaration]) -> None:
        """Store what registered workflow versions declare: every version's event
        triggers, and the current version's schedule (id: the workflow's name)."""
        changed = [d for d in declarations if self._declared.get((d.name, d.version)) != d]
        if not changed:
            return
        now = self._clock.now_ms()
        triggers = [(d.name, d.version, d.event_triggers) for d in changed]
        schedules = [
            (
                d.name,
                d.name,
                d.schedule,
                cron.next_after(d.schedule.cron, d.schedule.time_zone, now) if d.schedule else 0,
            )
            for d in changed
            if self._registry.current(d.name) == d.version
        ]
        declared = await self._store.declare_workflows(triggers, schedules)
        for schedule_id, *_ in schedules:
            self.timers.forget_run(schedule_id)
        for record in declared:
            self._arm(record)
        for d in changed:
            self._declared[(d.name, d.version)] = d

    # -- the API ------------------------------------------------------------------------

    async def create(
        self,
        schedule_id: str,
        workflow_name: str,
        workflow_version: str,
        spec: ScheduleSpec,
        paused: bool,
    ) -> tuple[ScheduleView, bool]:
        """Create a schedule; return it and whether the same one existed already."""
        if schedule_id:
            check_id("schedule_id", schedule_id)
        name = workflow_name.strip()
        if not name:
            raise InvalidArgument("workflow_name is required")
        if len(name) > MAX_ID_LENGTH or len(workflow_version) > MAX_ID_LENGTH:
            raise InvalidArgument(
                f"workflow_name and workflow_version are at most {MAX_ID_LENGTH} characters"
            )
        cron.check(spec.cron, spec.time_zone, "spec")
        input_json = check_json_payload(
            "spec.input", spec.input_json, "", self._config.max_payload_bytes
        )
        now = self._clock.now_ms()
        record = ScheduleRecord(
            schedule_id=schedule_id or uuid.uuid4().hex,
            workflow_name=name,
            workflow_version=workflow_version,
            spec=ScheduleSpec(spec.cron, spec.time_zone, input_json, spec.overlap, spec.catchup),
            origin=ScheduleOrigin.API,
            paused=paused,
            create_time=now,
            update_time=now,
            next_time=cron.next_after(spec.cron, spec.time_zone, now),
        )
        status, stored = await self._store.create_schedule(record)
        if status is CreateScheduleStatus.EXISTS_OTHER:
            raise AlreadyExists(
                f"schedule_id {shown(record.schedule_id)} already exists with other settings; "
                "pick another id, or delete that schedule first"
            )
        self._arm(stored)
        return self._view(stored, []), status is CreateScheduleStatus.EXISTS_SAME

    async def get(self, schedule_id: str, recent_runs: int = 0) -> ScheduleView:
        """A schedule with its next occasions and recent runs."""
        if recent_runs < 0:
            raise InvalidArgument("recent_runs must not be negative")
        record = await self._existing(schedule_id)
        limit = min(recent_runs or DEFAULT_RECENT_RUNS, MAX_RECENT_RUNS)
        return self._view(record, await self._store.schedule_runs(schedule_id, limit))

    async def list_page(
        self, workflow_name: str, page_size: int, after_id: str | None
    ) -> tuple[list[ScheduleView], str | None]:
        """One page of schedules by id, and the id to continue after."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or 100, 1000)
        records, more = await self._store.list_schedules_page(
            workflow_name or None, after_id, size, MAX_PAGE_BYTES
        )
        page = [self._view(r, []) for r in records]
        return page, (records[-1].schedule_id if more and records else None)

    async def pause(self, schedule_id: str) -> ScheduleView:
        """Pause a schedule (pausing twice is harmless)."""
        if not schedule_id:
            raise InvalidArgument("schedule_id is required")
        record = await self._store.set_schedule_paused(schedule_id, True, None)
        if record is None:
            raise NotFound(f"schedule {shown(schedule_id)} not found")
        self.timers.forget_run(schedule_id)
        return self._view(record, [])

    async def resume(self, schedule_id: str) -> ScheduleView:
        """Resume a paused schedule from its next occasion after now (occasions that
        passed while paused start nothing); resuming an active one changes nothing."""
        current = await self._existing(schedule_id)
        if not current.paused:
            return self._view(current, [])
        spec = current.spec
        next_time = cron.next_after(spec.cron, spec.time_zone, self._clock.now_ms())
        record = await self._store.set_schedule_paused(schedule_id, False, next_time)
        if record is None:
            raise NotFound(f"schedule {shown(schedule_id)} not found")
        self._arm(record)
        return self._view(record, [])

    async def delete(self, schedule_id: str) -> None:
        """Delete a schedule. A workflow's declared schedule comes back when a worker
        serving the workflow's newest version next connects."""
        if not schedule_id:
            raise InvalidArgument("schedule_id is required")
        if not await self._store.delete_schedule(schedule_id):
            raise NotFound(f"schedule {shown(schedule_id)} not found")
        self.timers.forget_run(schedule_id)
        for key in [k for k in self._declared if k[0] == schedule_id]:
            del self._declared[key]

    async def trigger(self, schedule_id: str, request_id: str) -> FireOutcome:
        """Start a run of a schedule now, as an extra occasion (overlap policy applies)."""
        if request_id:
            check_id("request_id", request_id)
            earlier = await self._store.schedule_request_run(schedule_id, request_id)
            if earlier is not None:  # a retry gets the first answer (and cancels nothing)
                return FireOutcome(FireStatus.STARTED, earlier, created=False)
        record = await self._existing(schedule_id)
        if record.spec.overlap is OverlapPolicy.CANCEL_PREVIOUS:
            await self._cancel_previous(record)
        outcome = await self._store.trigger_schedule(schedule_id, request_id or uuid.uuid4().hex)
        if outcome is None:
            raise NotFound(f"schedule {shown(schedule_id)} not found")
        if outcome.created and outcome.run is not None:
            self._make_ready(outcome.run)
        return outcome

    # -- firing -----------------------------------------------------------------------

    async def _fire(self, schedule_id: str, _occasion: str) -> None:
        """Handle a schedule's due occasions; one handler per schedule at a time."""
        if schedule_id in self._busy:
            self._again.add(schedule_id)
            return
        self._busy.add(schedule_id)
        try:
            while True:
                self._again.discard(schedule_id)
                await self._handle_due(schedule_id)
                if schedule_id not in self._again:
                    break
        finally:
            self._busy.discard(schedule_id)

    async def _handle_due(self, schedule_id: str) -> None:
        for _ in range(MAX_BACKLOG):
            record = await self._store.get_schedule(schedule_id)
            if record is None or record.paused:
                return
            if record.next_time > self._clock.now_ms():
                self._arm(record)
                return
            await self._handle(record)

    async def _handle(self, record: ScheduleRecord) -> None:
        """Handle the occasion the cursor points at (with the catch-up policy when
        it was missed while no server ran)."""
        spec = record.spec
        due = record.next_time
        if due < self._started_at:
            latest = cron.last_before(spec.cron, spec.time_zone, self._started_at)
            new_next = cron.next_after(spec.cron, spec.time_zone, self._started_at - 1)
            occasion = latest if spec.catchup is CatchupPolicy.RUN_ONCE else None
            log.info(
                "schedule %s missed occasions from %d to %d while no server ran; catch-up %s",
                record.schedule_id,
                due,
                latest,
                spec.catchup.value,
            )
        else:
            occasion, new_next = due, cron.next_after(spec.cron, spec.time_zone, due)
        if occasion is not None and spec.overlap is OverlapPolicy.CANCEL_PREVIOUS:
            await self._cancel_previous(record)
        outcome = await self._store.fire_schedule(record.schedule_id, due, new_next, occasion)
        if outcome.created and outcome.run is not None:
            self._make_ready(outcome.run)
        if outcome.status is FireStatus.SKIPPED and occasion is not None:
            log.info(
                "schedule %s skipped occasion %d: its previous run %s is unfinished",
                record.schedule_id,
                occasion,
                record.last_run_id,
            )

    async def _cancel_previous(self, record: ScheduleRecord) -> None:
        if record.last_run_id is None:
            return
        # A run that finished already (or is gone) has nothing to cancel.
        with contextlib.suppress(EngineError):
            await self._cancel(
                record.last_run_id, f"replaced by a new run of schedule {record.schedule_id}"
            )

    def _arm(self, record: ScheduleRecord) -> None:
        if not record.paused:
            self.timers.schedule(
                DueTimer(record.schedule_id, str(record.next_time), record.next_time)
            )

    # -- internals --------------------------------------------------------------------

    async def _existing(self, schedule_id: str) -> ScheduleRecord:
        if not schedule_id:
            raise InvalidArgument("schedule_id is required")
        record = await self._store.get_schedule(schedule_id)
        if record is None:
            raise NotFound(f"schedule {shown(schedule_id)} not found")
        return record

    def _view(self, record: ScheduleRecord, recent: Sequence[ScheduleRunRow]) -> ScheduleView:
        spec = record.spec
        upcoming = (
            []
            if record.paused
            else cron.upcoming(spec.cron, spec.time_zone, record.next_time, NEXT_OCCASIONS)
        )
        return ScheduleView(record, upcoming, list(recent))
