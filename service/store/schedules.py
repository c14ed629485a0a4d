"""Runs started without a caller: event triggers, cron schedules, delayed starts.

The functions run inside one write (or read) transaction on the caller's
connection; ``ScheduleStoreMixin`` gives ``SqlStore`` the matching ``Store``
methods. Exactly-once starts rest on the runs' unique idempotency key: an
event starts at most one run per (event id, workflow), and a schedule at most
one per (schedule, occasion), however often either is handled.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select, update

from stepd.server.domain import TERMINAL_STATUSES, DueTimer, NewRun, RunRecord, RunStatus
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
)
from stepd.server.store import concurrency, debounce, flow, rows, versions
from stepd.server.store.dialects import byte_length, insert_for
from stepd.server.store.schema import runs, schedules, workflow_triggers

log = logging.getLogger("stepd.store.schedules")

if TYPE_CHECKING:
    from stepd.server.clock import Clock
    from stepd.server.store.executor import Committer, Reader

#: Idempotency keys of runs the server starts itself begin with this; Trigger
#: refuses them from callers.
RESERVED_KEY_PREFIX = "stepd:"
_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


def event_key(event_id: str, workflow_name: str) -> str:
    """The idempotency key of the run an event starts for a workflow."""
    return f"{RESERVED_KEY_PREFIX}event:{event_id}:{workflow_name}"


def occasion_key(schedule_id: str, occasion: int) -> str:
    """The idempotency key of the run a schedule starts for an occasion."""
    return f"{RESERVED_KEY_PREFIX}schedule:{schedule_id}:{occasion}"


def request_key(schedule_id: str, request_id: str) -> str:
    """The idempotency key of the run a TriggerSchedule request starts."""
    return f"{RESERVED_KEY_PREFIX}schedule:{schedule_id}:request:{request_id}"


# -- event triggers ---------------------------------------------------------------


def declare_triggers(conn: Connection, name: str, version: str, event_names: Iterable[str]) -> None:
    """Make ``event_names`` the event triggers of one workflow version."""
    wanted = sorted(set(event_names))
    mine = (
        workflow_triggers.c.workflow_name == name,
        workflow_triggers.c.workflow_version == version,
    )
    conn.execute(
        delete(workflow_triggers).where(*mine, workflow_triggers.c.event_name.not_in(wanted))
    )
    if wanted:
        insert = insert_for(conn.dialect.name)
        conn.execute(
            insert(workflow_triggers).on_conflict_do_nothing(),
            [{"workflow_name": name, "workflow_version": version, "event_name": e} for e in wanted],
        )


def start_subscribed(
    conn: Connection,
    event_id: str,
    event_name: str,
    payload_json: str,
    now: int,
    current: Mapping[str, str] | None = None,
) -> list[RunRecord]:
    """Start one run of every workflow whose current version declares ``event_name``
    as a trigger, with the payload as input; return the runs created.

    ``current`` holds the current versions the caller knows (pinned, or served by
    a connected worker). For another workflow the pinned version counts, else
    the newest version not retired decides whether the event starts a run, and
    the run gets no version: the first worker to claim it pins it to its own.
    """
    subscribed: dict[str, set[str]] = {}
    for row in conn.execute(
        select(workflow_triggers.c.workflow_name, workflow_triggers.c.workflow_version).where(
            workflow_triggers.c.event_name == event_name
        )
    ):
        subscribed.setdefault(row.workflow_name, set()).add(row.workflow_version)
    started = []
    for name in sorted(subscribed):
        version = (current or {}).get(name) or versions.pinned(conn, name)
        deciding = version or versions.newest_in_use(conn, name)
        if deciding not in subscribed[name]:
            continue  # an older version declared it; the current one does not
        run_id = uuid.uuid4().hex
        new = NewRun(
            run_id=run_id,
            workflow_name=name,
            workflow_version=version,
            input_json=payload_json,
            create_time=now,
            idempotency_key=event_key(event_id, name),
            root_run_id=run_id,
        )
        run, created = _insert_run(conn, new, f"event {event_name!r} ({event_id})")
        if run is not None and created:
            started.append(run)
    return started


# -- schedules ----------------------------------------------------------------------


def insert_schedule(
    conn: Connection, record: ScheduleRecord
) -> tuple[CreateScheduleStatus, ScheduleRecord]:
    """Insert a schedule; with its id taken, report whether the stored one has the
    same settings, and return it."""
    insert = insert_for(conn.dialect.name)
    inserted = conn.execute(
        insert(schedules)
        .on_conflict_do_nothing()
        .values(_schedule_values(record))
        .returning(schedules.c.schedule_id)
    ).first()
    if inserted is not None:
        return CreateScheduleStatus.CREATED, record
    existing = get(conn, record.schedule_id)
    assert existing is not None
    same = (existing.workflow_name, existing.workflow_version, existing.spec, existing.origin) == (
        record.workflow_name,
        record.workflow_version,
        record.spec,
        record.origin,
    )
    return (
        CreateScheduleStatus.EXISTS_SAME if same else CreateScheduleStatus.EXISTS_OTHER
    ), existing


def declare_schedule(
    conn: Connection,
    schedule_id: str,
    workflow_name: str,
    spec: ScheduleSpec | None,
    next_time: int,
    now: int,
) -> ScheduleRecord | None:
    """Create or update a workflow's declared schedule (None: remove it).

    A changed cron expression or time zone moves the cursor to ``next_time``;
    otherwise the cursor and the paused flag are kept. Returns the schedule.
    """
    existing = get(conn, schedule_id)
    if spec is None:
        if existing is not None and existing.origin is ScheduleOrigin.WORKFLOW:
            conn.execute(delete(schedules).where(schedules.c.schedule_id == schedule_id))
        return None
    if existing is None:
        record = ScheduleRecord(
            schedule_id=schedule_id,
            workflow_name=workflow_name,
            workflow_version="",
            spec=spec,
            origin=ScheduleOrigin.WORKFLOW,
            paused=False,
            create_time=now,
            update_time=now,
            next_time=next_time,
        )
        insert_schedule(conn, record)
        return record
    if existing.spec == spec and existing.origin is ScheduleOrigin.WORKFLOW:
        return existing
    values: dict[str, Any] = {
        "workflow_name": workflow_name,
        "workflow_version": "",
        "cron": spec.cron,
        "time_zone": spec.time_zone,
        "input_json": spec.input_json,
        "overlap_policy": spec.overlap.value,
        "catchup_policy": spec.catchup.value,
        "origin": ScheduleOrigin.WORKFLOW.value,
        "update_time": now,
    }
    if (existing.spec.cron, existing.spec.time_zone) != (spec.cron, spec.time_zone):
        values["next_time"] = next_time
    return _update(conn, schedule_id, values)


def get(conn: Connection, schedule_id: str) -> ScheduleRecord | None:
    """One schedule, or None."""
    row = (
        conn.execute(select(schedules).where(schedules.c.schedule_id == schedule_id))
        .mappings()
        .first()
    )
    return _schedule_from_row(row) if row is not None else None


def list_page(
    conn: Connection,
    workflow_name: str | None,
    after_id: str | None,
    limit: int,
    max_bytes: int | None = None,
) -> tuple[list[ScheduleRecord], bool]:
    """Up to ``limit`` schedules by id, after ``after_id``, of one workflow if given,
    and whether more follow. With ``max_bytes``, only as many (at least one) as fit
    with their inputs, read a few at a time so that memory stays near it."""
    light = [c for c in schedules.c if c.name != "input_json"]
    input_size = byte_length(conn.dialect.name, schedules.c.input_json).label("input_size")
    taken: list[Any] = []
    size, more, after = 0, False, after_id
    chunk = 4 if max_bytes is not None else limit + 1
    while not more:
        stmt = select(*light, input_size)
        if workflow_name is not None:
            stmt = stmt.where(schedules.c.workflow_name == workflow_name)
        if after is not None:
            stmt = stmt.where(schedules.c.schedule_id > after)
        wanted = min(chunk, limit - len(taken) + 1)
        found = list(conn.execute(stmt.order_by(schedules.c.schedule_id).limit(wanted)).mappings())
        for row in found:
            cost = 300 + row["input_size"]
            full = max_bytes is not None and taken and size + cost > max_bytes
            if len(taken) == limit or full:
                more = True
                break
            taken.append(row)
            size += cost
        if len(found) < wanted:
            break
        after, chunk = found[-1]["schedule_id"], chunk * 4
    inputs: dict[str, str] = {}
    if taken:
        stmt = select(schedules.c.schedule_id, schedules.c.input_json).where(
            schedules.c.schedule_id.in_([row["schedule_id"] for row in taken])
        )
        inputs = {row.schedule_id: row.input_json for row in conn.execute(stmt)}
    records = [
        _schedule_from_row({**row, "input_json": inputs.get(row["schedule_id"], "null")})
        for row in taken
    ]
    return records, more


def set_paused(
    conn: Connection, schedule_id: str, paused: bool, next_time: int | None, now: int
) -> ScheduleRecord | None:
    """Pause or resume a schedule (moving its cursor to ``next_time`` when given)."""
    values: dict[str, Any] = {"paused": int(paused), "update_time": now}
    if next_time is not None:
        values["next_time"] = next_time
    return _update(conn, schedule_id, values)


def delete_one(conn: Connection, schedule_id: str) -> bool:
    """Delete a schedule; False when there was none."""
    return bool(
        conn.execute(delete(schedules).where(schedules.c.schedule_id == schedule_id)).rowcount
    )


def fire(
    conn: Connection,
    schedule_id: str,
    expected_next: int,
    new_next: int,
    occasion: int | None,
    now: int,
) -> FireOutcome:
    """Handle the occasion the cursor points at: move the cursor from
    ``expected_next`` to ``new_next`` and start the run for ``occasion`` (None:
    start nothing, a skipped catch-up), subject to the overlap policy.

    STALE when the schedule is gone, paused, or its cursor moved meanwhile (the
    occasion was handled already), so handling an occasion twice starts nothing.
    """
    moved = (
        conn.execute(
            update(schedules)
            .where(
                schedules.c.schedule_id == schedule_id,
                schedules.c.next_time == expected_next,
                schedules.c.paused == 0,
            )
            .values(next_time=new_next, update_time=now)
            .returning(*schedules.c)
        )
        .mappings()
        .first()
    )
    if moved is None:
        return FireOutcome(FireStatus.STALE)
    if occasion is None:
        return FireOutcome(FireStatus.SKIPPED)
    schedule = _schedule_from_row(moved)
    return _start(conn, schedule, occasion_key(schedule_id, occasion), occasion, now)


def trigger(conn: Connection, schedule_id: str, request_id: str, now: int) -> FireOutcome | None:
    """Start a run of a schedule now (the overlap policy applies); None when the
    schedule does not exist. The same request_id starts one run."""
    key = request_key(schedule_id, request_id)
    existing = _run_with_key(conn, key)
    if existing is not None:  # a retry gets the run the request started
        return FireOutcome(FireStatus.STARTED, existing, created=False)
    schedule = get(conn, schedule_id)
    if schedule is None:
        return None
    return _start(conn, schedule, key, now, now)


def _run_with_key(conn: Connection, key: str | None) -> RunRecord | None:
    if key is None:
        return None
    row = conn.execute(select(runs).where(runs.c.idempotency_key == key)).mappings().first()
    return None if row is None else rows.run_from_row(row)


def recent_runs(conn: Connection, schedule_id: str, limit: int) -> list[ScheduleRunRow]:
    """The runs a schedule started most recently, newest first."""
    stmt = (
        select(runs.c.run_id, runs.c.schedule_time, runs.c.status, runs.c.create_time)
        .where(runs.c.schedule_id == schedule_id)
        .order_by(runs.c.seq.desc())
        .limit(limit)
    )
    return [
        ScheduleRunRow(r.run_id, r.schedule_time, RunStatus(r.status), r.create_time)
        for r in conn.execute(stmt)
    ]


def due(conn: Connection, until: int, limit: int) -> list[DueTimer]:
    """Unpaused schedules whose next occasion is at or before ``until``, as timers
    keyed (schedule id, occasion)."""
    stmt = (
        select(schedules.c.schedule_id, schedules.c.next_time)
        .where(schedules.c.paused == 0, schedules.c.next_time <= until)
        .order_by(schedules.c.next_time)
        .limit(limit)
    )
    return [DueTimer(r.schedule_id, str(r.next_time), r.next_time) for r in conn.execute(stmt)]


def due_starts(conn: Connection, after: int, until: int, limit: int) -> list[DueTimer]:
    """Pending runs whose start time is after ``after`` and at or before ``until``,
    as timers keyed (run id, "start")."""
    stmt = (
        select(runs.c.run_id, runs.c.start_time_not_before)
        .where(
            runs.c.status == RunStatus.PENDING.value,
            runs.c.start_time_not_before > after,
            runs.c.start_time_not_before <= until,
        )
        .order_by(runs.c.start_time_not_before)
        .limit(limit)
    )
    return [DueTimer(r.run_id, "start", r.start_time_not_before) for r in conn.execute(stmt)]


# -- internals --------------------------------------------------------------------


def _start(
    conn: Connection, schedule: ScheduleRecord, key: str, schedule_time: int, now: int
) -> FireOutcome:
    if schedule.spec.overlap is OverlapPolicy.SKIP and schedule.last_run_id is not None:
        status = conn.execute(
            select(runs.c.status).where(runs.c.run_id == schedule.last_run_id)
        ).scalar()
        if status is not None and status not in _TERMINAL:
            _update(conn, schedule.schedule_id, {"last_time": schedule_time})
            return FireOutcome(FireStatus.SKIPPED)
    run_id = uuid.uuid4().hex
    new = NewRun(
        run_id=run_id,
        workflow_name=schedule.workflow_name,
        # No version: the pinned one, else none (the first claiming worker pins it).
        workflow_version=schedule.workflow_version or versions.pinned(conn, schedule.workflow_name),
        input_json=schedule.spec.input_json,
        create_time=now,
        idempotency_key=key,
        root_run_id=run_id,
        schedule_id=schedule.schedule_id,
        schedule_time=schedule_time,
    )
    run, created = _insert_run(conn, new, f"schedule {schedule.schedule_id!r}")
    if run is None:
        _update(conn, schedule.schedule_id, {"last_time": schedule_time})
        return FireOutcome(FireStatus.SKIPPED)
    _update(conn, schedule.schedule_id, {"last_time": schedule_time, "last_run_id": run.run_id})
    return FireOutcome(FireStatus.STARTED, run, created)


def _insert_run(conn: Connection, new: NewRun, started_by: str) -> tuple[RunRecord | None, bool]:
    """Insert a run unless its idempotency key has one; return the key's run and
    whether it was created. None when a ``cancel_newest`` concurrency limit
    refused it (logged once, with ``started_by``: what would have started it)."""
    values = rows.new_run_values(new)
    settings = flow.apply_new(conn, values)
    if settings is not None and settings.debounce is not None:
        found = _run_with_key(conn, new.idempotency_key)
        if found is not None:
            return found, False
        folded = debounce.fold(conn, values, settings.debounce, None)
        if folded is not None:
            return folded, False
    refusal = concurrency.admit_new(conn, values)
    row = None
    if refusal is None:
        insert = insert_for(conn.dialect.name)
        row = (
            conn.execute(insert(runs).on_conflict_do_nothing().values(values).returning(*runs.c))
            .mappings()
            .first()
        )
    if row is not None:
        return rows.run_from_row(row), True
    existing = _run_with_key(conn, new.idempotency_key)
    if existing is not None:
        return existing, False
    if refusal is not None:
        log.warning(
            "%s did not start a run of %s: %s", started_by, new.workflow_name, refusal.message()
        )
        return None, False
    raise RuntimeError(f"run {new.run_id!r} was neither inserted nor found")


def _update(conn: Connection, schedule_id: str, values: dict[str, Any]) -> ScheduleRecord | None:
    row = (
        conn.execute(
            update(schedules)
            .where(schedules.c.schedule_id == schedule_id)
            .values(values)
            .returning(*schedules.c)
        )
        .mappings()
        .first()
    )
    return _schedule_from_row(row) if row is not None else None


def _schedule_values(record: ScheduleRecord) -> dict[str, Any]:
    spec = record.spec
    return {
        "schedule_id": record.schedule_id,
        "workflow_name": record.workflow_name,
        "workflow_version": record.workflow_version,
        "cron": spec.cron,
        "time_zone": spec.time_zone,
        "input_json": spec.input_json,
        "overlap_policy": spec.overlap.value,
        "catchup_policy": spec.catchup.value,
        "origin": record.origin.value,
        "paused": int(record.paused),
        "create_time": record.create_time,
        "update_time": record.update_time,
        "next_time": record.next_time,
        "last_time": record.last_time,
        "last_run_id": record.last_run_id,
    }


def _schedule_from_row(row: Mapping[Any, Any]) -> ScheduleRecord:
    return ScheduleRecord(
        schedule_id=row["schedule_id"],
        workflow_name=row["workflow_name"],
        workflow_version=row["workflow_version"],
        spec=ScheduleSpec(
            cron=row["cron"],
            time_zone=row["time_zone"],
            input_json=row["input_json"],
            overlap=OverlapPolicy(row["overlap_policy"]),
            catchup=CatchupPolicy(row["catchup_policy"]),
        ),
        origin=ScheduleOrigin(row["origin"]),
        paused=bool(row["paused"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        next_time=row["next_time"],
        last_time=row["last_time"],
        last_run_id=row["last_run_id"],
    )


class ScheduleStoreMixin:
    """The ``Store`` methods for event triggers, schedules and delayed starts,
    for ``SqlStore`` (which provides the group committer and the read pool)."""

    _committer: Committer
    _reads: Reader
    _clock: Clock

    async def declare_workflows(
        self,
        triggers: Sequence[tuple[str, str, tuple[str, ...]]],
        schedules_: Sequence[tuple[str, str, ScheduleSpec | None, int]],
    ) -> list[ScheduleRecord]:
        """Store workflow declarations in one transaction: (name, version, event
        names) triggers, and (schedule id, workflow, spec or None, next occasion)
        declared schedules; return the schedules now declared."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> list[ScheduleRecord]:
            for name, version, events in triggers:
                declare_triggers(conn, name, version, events)
            declared = []
            for schedule_id, workflow_name, spec, next_time in schedules_:
                record = declare_schedule(conn, schedule_id, workflow_name, spec, next_time, now)
                if record is not None:
                    declared.append(record)
            return declared

        return await self._committer.submit(op)

    async def create_schedule(
        self, record: ScheduleRecord
    ) -> tuple[CreateScheduleStatus, ScheduleRecord]:
        """Insert a schedule; for a taken id, whether the stored one is the same."""
        return await self._committer.submit(lambda conn: insert_schedule(conn, record))

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """One schedule, or None."""
        return await self._reads.run(lambda conn: get(conn, schedule_id))

    async def list_schedules(
        self, workflow_name: str | None, after_id: str | None, limit: int
    ) -> list[ScheduleRecord]:
        """Up to ``limit`` schedules by id after ``after_id`` (of one workflow if given)."""
        page = await self._reads.run(lambda conn: list_page(conn, workflow_name, after_id, limit))
        return page[0]

    async def list_schedules_page(
        self, workflow_name: str | None, after_id: str | None, limit: int, max_bytes: int
    ) -> tuple[list[ScheduleRecord], bool]:
        """Up to ``limit`` schedules by id after ``after_id`` (of one workflow if given),
        fewer when their inputs pass ``max_bytes`` (at least one), and whether more
        follow."""
        return await self._reads.run(
            lambda conn: list_page(conn, workflow_name, after_id, limit, max_bytes)
        )

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, next_time: int | None
    ) -> ScheduleRecord | None:
        """Pause or resume a schedule; None when it does not exist."""
        now = self._clock.now_ms()
        return await self._committer.submit(
            lambda conn: set_paused(conn, schedule_id, paused, next_time, now)
        )

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule; False when there was none."""
        return await self._committer.submit(lambda conn: delete_one(conn, schedule_id))

    async def fire_schedule(
        self, schedule_id: str, expected_next: int, new_next: int, occasion: int | None
    ) -> FireOutcome:
        """Handle a schedule's next occasion once (see ``schedules.fire``)."""
        now = self._clock.now_ms()
        return await self._committer.submit(
            lambda conn: fire(conn, schedule_id, expected_next, new_next, occasion, now)
        )

    async def trigger_schedule(self, schedule_id: str, request_id: str) -> FireOutcome | None:
        """Start a run of a schedule now; None for an unknown schedule."""
        now = self._clock.now_ms()
        return await self._committer.submit(
            lambda conn: trigger(conn, schedule_id, request_id, now)
        )

    async def schedule_request_run(self, schedule_id: str, request_id: str) -> RunRecord | None:
        """The run a TriggerSchedule with ``request_id`` started, if any."""
        key = request_key(schedule_id, request_id)
        return await self._reads.run(lambda conn: _run_with_key(conn, key))

    async def schedule_runs(self, schedule_id: str, limit: int) -> list[ScheduleRunRow]:
        """The runs a schedule started most recently, newest first."""
        return await self._reads.run(lambda conn: recent_runs(conn, schedule_id, limit))

    async def due_schedules(self, until: int, limit: int) -> list[DueTimer]:
        """Unpaused schedules with an occasion at or before ``until``."""
        return await self._reads.run(lambda conn: due(conn, until, limit))

    async def delayed_starts(self, after: int, until: int, limit: int) -> list[DueTimer]:
        """Pending runs starting in (after, until]."""
        return await self._reads.run(lambda conn: due_starts(conn, after, until, limit))
