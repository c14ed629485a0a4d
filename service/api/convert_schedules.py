"""Conversions for schedules and workflow declarations, and ListSchedules page tokens."""

from __future__ import annotations

import base64
import hashlib

from stepd.server.api.convert import STATUS_TO_PROTO, duration_ms, payload_in, timestamp
from stepd.server.domain import ConcurrencySpec, ConcurrencyStrategy
from stepd.server.domain_flow import DebounceSpec, RateSpec
from stepd.server.domain_schedules import (
    CatchupPolicy,
    OverlapPolicy,
    ScheduleOrigin,
    ScheduleRunRow,
    ScheduleSpec,
    WorkflowDeclaration,
)
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.schedules import ScheduleView
from stepd.server.engine.validation import check_name
from stepd.v1 import schedules_pb2, worker_service_pb2

OVERLAP_FROM_PROTO = {
    schedules_pb2.SCHEDULE_OVERLAP_POLICY_UNSPECIFIED: OverlapPolicy.SKIP,
    schedules_pb2.SCHEDULE_OVERLAP_POLICY_SKIP: OverlapPolicy.SKIP,
    schedules_pb2.SCHEDULE_OVERLAP_POLICY_ALLOW: OverlapPolicy.ALLOW,
    schedules_pb2.SCHEDULE_OVERLAP_POLICY_CANCEL_PREVIOUS: OverlapPolicy.CANCEL_PREVIOUS,
}
OVERLAP_TO_PROTO = {
    OverlapPolicy.SKIP: schedules_pb2.SCHEDULE_OVERLAP_POLICY_SKIP,
    OverlapPolicy.ALLOW: schedules_pb2.SCHEDULE_OVERLAP_POLICY_ALLOW,
    OverlapPolicy.CANCEL_PREVIOUS: schedules_pb2.SCHEDULE_OVERLAP_POLICY_CANCEL_PREVIOUS,
}
CATCHUP_FROM_PROTO = {
    schedules_pb2.SCHEDULE_CATCHUP_POLICY_UNSPECIFIED: CatchupPolicy.SKIP,
    schedules_pb2.SCHEDULE_CATCHUP_POLICY_SKIP: CatchupPolicy.SKIP,
    schedules_pb2.SCHEDULE_CATCHUP_POLICY_RUN_ONCE: CatchupPolicy.RUN_ONCE,
}
CATCHUP_TO_PROTO = {
    CatchupPolicy.SKIP: schedules_pb2.SCHEDULE_CATCHUP_POLICY_SKIP,
    CatchupPolicy.RUN_ONCE: schedules_pb2.SCHEDULE_CATCHUP_POLICY_RUN_ONCE,
}
ORIGIN_TO_PROTO = {
    ScheduleOrigin.API: schedules_pb2.SCHEDULE_ORIGIN_API,
    ScheduleOrigin.WORKFLOW: schedules_pb2.SCHEDULE_ORIGIN_WORKFLOW,
}


def spec_from_proto(spec: schedules_pb2.ScheduleSpec, field: str) -> ScheduleSpec:
    """A ScheduleSpec message to a ScheduleSpec (cron and zone are checked later)."""
    if spec.overlap_policy not in OVERLAP_FROM_PROTO:
        raise InvalidArgument(f"{field}.overlap_policy {spec.overlap_policy} is not known")
    if spec.catchup_policy not in CATCHUP_FROM_PROTO:
        raise InvalidArgument(f"{field}.catchup_policy {spec.catchup_policy} is not known")
    check_name(f"{field}.cron", spec.cron)
    check_name(f"{field}.time_zone", spec.time_zone)
    payload_in(spec.input, f"{field}.input")
    if spec.input.encoding and spec.input.encoding != "json":
        raise InvalidArgument(
            f"{field}.input.encoding {spec.input.encoding!r} is not supported; "
            f"send JSON in {field}.input.json"
        )
    return ScheduleSpec(
        cron=spec.cron.strip(),
        time_zone=spec.time_zone or "UTC",
        input_json=spec.input.json or "null",
        overlap=OVERLAP_FROM_PROTO[spec.overlap_policy],
        catchup=CATCHUP_FROM_PROTO[spec.catchup_policy],
    )


def spec_to_proto(spec: ScheduleSpec) -> schedules_pb2.ScheduleSpec:
    """A ScheduleSpec to its message."""
    msg = schedules_pb2.ScheduleSpec(
        cron=spec.cron,
        time_zone=spec.time_zone,
        overlap_policy=OVERLAP_TO_PROTO[spec.overlap],
        catchup_policy=CATCHUP_TO_PROTO[spec.catchup],
    )
    msg.input.json = spec.input_json
    return msg


def schedule_run_to_proto(run: ScheduleRunRow) -> schedules_pb2.ScheduleRun:
    """One of a schedule's runs to a ScheduleRun."""
    return schedules_pb2.ScheduleRun(
        run_id=run.run_id,
        schedule_time=timestamp(run.schedule_time),
        status=STATUS_TO_PROTO[run.status],
        create_time=timestamp(run.create_time),
    )


def schedule_to_proto(view: ScheduleView) -> schedules_pb2.Schedule:
    """A schedule (with next occasions and recent runs) to a Schedule message."""
    record = view.record
    msg = schedules_pb2.Schedule(
        schedule_id=record.schedule_id,
        workflow_name=record.workflow_name,
        workflow_version=record.workflow_version,
        spec=spec_to_proto(record.spec),
        paused=record.paused,
        origin=ORIGIN_TO_PROTO[record.origin],
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        last_occasion_time=timestamp(record.last_time),
        recent_runs=[schedule_run_to_proto(r) for r in view.recent_runs],
    )
    for time in view.next_times:
        msg.next_occasion_times.add().FromMilliseconds(time)
    return msg


def declarations_from_hello(hello: worker_service_pb2.WorkerHello) -> list[WorkflowDeclaration]:
    """What each workflow version in a hello declares."""
    return [
        WorkflowDeclaration(
            name=w.name,
            version=w.version,
            event_triggers=tuple(w.event_triggers),
            schedule=(
                spec_from_proto(w.schedule, f"hello.workflows[{i}].schedule")
                if w.HasField("schedule")
                else None
            ),
            concurrency=(
                concurrency_from_proto(w.concurrency, w.name) if w.HasField("concurrency") else None
            ),
            priority=w.priority,
            start_rate=(
                RateSpec(
                    w.start_rate.name or w.name,
                    w.start_rate.key_path,
                    w.start_rate.limit,
                    duration_ms(w.start_rate.period, f"hello.workflows[{i}].start_rate.period"),
                )
                if w.HasField("start_rate")
                else None
            ),
            debounce=debounce_from_proto(w.debounce, i) if w.HasField("debounce") else None,
        )
        for i, w in enumerate(hello.workflows)
    ]


def debounce_from_proto(debounce: worker_service_pb2.Debounce, index: int) -> DebounceSpec:
    """A workflow's declared debounce (checked further by the engine)."""
    where = f"hello.workflows[{index}].debounce"
    return DebounceSpec(
        debounce.key_path,
        duration_ms(debounce.period, f"{where}.period"),
        (
            duration_ms(debounce.max_wait, f"{where}.max_wait")
            if debounce.HasField("max_wait")
            else None
        ),
    )


_STRATEGIES = {
    worker_service_pb2.CONCURRENCY_STRATEGY_UNSPECIFIED: ConcurrencyStrategy.QUEUE,
    worker_service_pb2.CONCURRENCY_STRATEGY_QUEUE: ConcurrencyStrategy.QUEUE,
    worker_service_pb2.CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS: (
        ConcurrencyStrategy.CANCEL_IN_PROGRESS
    ),
    worker_service_pb2.CONCURRENCY_STRATEGY_CANCEL_NEWEST: ConcurrencyStrategy.CANCEL_NEWEST,
}


def concurrency_from_proto(
    limit: worker_service_pb2.ConcurrencyLimit, workflow_name: str
) -> ConcurrencySpec:
    """A workflow's declared concurrency limit (its name defaults to the workflow's)."""
    strategy = _STRATEGIES.get(limit.strategy)
    if strategy is None:
        raise InvalidArgument(
            f"hello: workflow {workflow_name!r}: concurrency.strategy {limit.strategy} is unknown"
        )
    return ConcurrencySpec(
        name=limit.name or workflow_name,
        key_path=limit.key_path,
        limit=limit.limit,
        strategy=strategy,
    )


def _fingerprint(workflow_name: str) -> str:
    return hashlib.sha256(workflow_name.encode()).hexdigest()[:16]


def encode_page_token(after_id: str, workflow_name: str) -> str:
    """A ListSchedules token for the page after ``after_id``."""
    raw = f"s1:{_fingerprint(workflow_name)}:{after_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, workflow_name: str) -> str | None:
    """The schedule id a ListSchedules token continues after (None for no token)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, fingerprint, after_id = raw.split(":", 2)
    except ValueError:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged") from None
    if kind != "s1" or fingerprint != _fingerprint(workflow_name):
        raise InvalidArgument(
            "page_token was made for a different workflow_name; send the same filter with it"
        )
    return after_id
