"""Cron schedules: ``Schedule`` (declare one on a workflow, or create one with
``Client.create_schedule``) and ``ScheduleInfo`` (a schedule as the server has it).

A cron expression has five fields (``minute hour day-of-month month
day-of-week``) or six with a leading seconds field (``*/10 * * * * *`` is
every ten seconds); ``@hourly``-style aliases work too. It is read in the
schedule's IANA time zone (``UTC`` by default). Each occasion starts exactly
one run, also across server restarts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from google.protobuf import timestamp_pb2

from stepd._run_codec import status_from_proto
from stepd._runs import RunStatus
from stepd._serde import loads, payload_text
from stepd.v1 import schedules_pb2


class OverlapPolicy(enum.StrEnum):
    """What an occasion does while the run the schedule started last is unfinished."""

    SKIP = "skip"
    """Start nothing for this occasion (the default)."""
    ALLOW = "allow"
    """Start a run anyway."""
    CANCEL_PREVIOUS = "cancel_previous"
    """Cancel the unfinished run, then start the new one."""


class CatchupPolicy(enum.StrEnum):
    """What happens to occasions that passed while no server was running."""

    SKIP = "skip"
    """Missed occasions start nothing (the default)."""
    RUN_ONCE = "run_once"
    """However many were missed, start one run, for the latest of them."""


#: The longest time zone name the server accepts (IANA names are far shorter).
_MAX_ZONE_LENGTH = 200

_OVERLAP_TO_PROTO = {
    OverlapPolicy.SKIP: schedules_pb2.SCHEDULE_OVERLAP_POLICY_SKIP,
    OverlapPolicy.ALLOW: schedules_pb2.SCHEDULE_OVERLAP_POLICY_ALLOW,
    OverlapPolicy.CANCEL_PREVIOUS: schedules_pb2.SCHEDULE_OVERLAP_POLICY_CANCEL_PREVIOUS,
}
_CATCHUP_TO_PROTO = {
    CatchupPolicy.SKIP: schedules_pb2.SCHEDULE_CATCHUP_POLICY_SKIP,
    CatchupPolicy.RUN_ONCE: schedules_pb2.SCHEDULE_CATCHUP_POLICY_RUN_ONCE,
}
_OVERLAP_FROM_PROTO = {v: k for k, v in _OVERLAP_TO_PROTO.items()}
_CATCHUP_FROM_PROTO = {v: k for k, v in _CATCHUP_TO_PROTO.items()}
_ORIGINS = {
    schedules_pb2.SCHEDULE_ORIGIN_API: "api",
    schedules_pb2.SCHEDULE_ORIGIN_WORKFLOW: "workflow",
}


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to start runs of a workflow, with what input, and how.

    ``Schedule("0 9 * * 1-5", time_zone="Europe/Paris", input={"report": "daily"})``
    starts a run at 09:00 Paris time every weekday. ``overlap`` says what an
    occasion does while the previous run is unfinished, ``catchup`` what happens
    to occasions missed while the server was down. The expression and the time
    zone are checked here (ValueError); the server checks them again.
    """

    cron: str
    time_zone: str = "UTC"
    input: Any = None
    overlap: OverlapPolicy | str = OverlapPolicy.SKIP
    catchup: CatchupPolicy | str = CatchupPolicy.SKIP

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not croniter.is_valid(
            self.cron, second_at_beginning=True
        ):
            raise ValueError(
                f"cron {self.cron!r} is not a valid cron expression (five fields "
                "'minute hour day month weekday', or six with seconds first)"
            )
        try:
            if len(self.time_zone) > _MAX_ZONE_LENGTH:  # no file system holds such a name
                raise ValueError(self.time_zone)
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
            text = str(self.time_zone)
            shown = repr(text[:40]) + ("…" if len(text) > 40 else "")
            raise ValueError(f"time_zone {shown} is not a known IANA time zone") from None
        try:
            object.__setattr__(self, "overlap", OverlapPolicy(self.overlap))
            object.__setattr__(self, "catchup", CatchupPolicy(self.catchup))
        except ValueError as exc:
            raise ValueError(f"unknown policy: {exc}") from None

    def to_proto(self, input_json: str) -> schedules_pb2.ScheduleSpec:
        """The wire spec, with the input already serialized."""
        spec = schedules_pb2.ScheduleSpec(
            cron=self.cron,
            time_zone=self.time_zone,
            overlap_policy=_OVERLAP_TO_PROTO[OverlapPolicy(self.overlap)],
            catchup_policy=_CATCHUP_TO_PROTO[CatchupPolicy(self.catchup)],
        )
        spec.input.json = input_json
        return spec


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """One run a schedule started, for the occasion ``schedule_time``."""

    run_id: str
    schedule_time: datetime | None
    status: RunStatus
    create_time: datetime | None


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as the server has it.

    ``origin`` is ``"api"`` (``Client.create_schedule``) or ``"workflow"``
    (declared with ``@workflow(schedule=...)``; its id is the workflow's name).
    ``next_occasion_times`` are the next occasions (none while paused);
    ``recent_runs`` (from ``get_schedule``) the runs it started, newest first.
    """

    schedule_id: str
    workflow_name: str
    workflow_version: str
    cron: str
    time_zone: str
    input: Any
    overlap: OverlapPolicy
    catchup: CatchupPolicy
    paused: bool
    origin: str
    create_time: datetime | None
    update_time: datetime | None
    last_occasion_time: datetime | None
    next_occasion_times: tuple[datetime, ...] = ()
    recent_runs: tuple[ScheduledRun, ...] = field(default_factory=tuple)

    @classmethod
    def from_proto(cls, msg: schedules_pb2.Schedule) -> ScheduleInfo:
        """Decode a ``stepd.v1.Schedule``."""
        spec = msg.spec
        return cls(
            schedule_id=msg.schedule_id,
            workflow_name=msg.workflow_name,
            workflow_version=msg.workflow_version,
            cron=spec.cron,
            time_zone=spec.time_zone,
            input=loads(payload_text(spec.input)),
            overlap=_OVERLAP_FROM_PROTO.get(spec.overlap_policy, OverlapPolicy.SKIP),
            catchup=_CATCHUP_FROM_PROTO.get(spec.catchup_policy, CatchupPolicy.SKIP),
            paused=msg.paused,
            origin=_ORIGINS.get(msg.origin, ""),
            create_time=_time(msg, "create_time"),
            update_time=_time(msg, "update_time"),
            last_occasion_time=_time(msg, "last_occasion_time"),
            next_occasion_times=tuple(_dt(t) for t in msg.next_occasion_times),
            recent_runs=tuple(
                ScheduledRun(
                    run_id=r.run_id,
                    schedule_time=_time(r, "schedule_time"),
                    status=status_from_proto(r.status),
                    create_time=_time(r, "create_time"),
                )
                for r in msg.recent_runs
            ),
        )


def _dt(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _time(msg: Any, name: str) -> datetime | None:
    return _dt(getattr(msg, name)) if msg.HasField(name) else None
