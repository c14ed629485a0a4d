"""Conversions between stepd.v1 messages and the engine's plain data."""

from __future__ import annotations

from collections import Counter

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from stepd.server.api import trace_context
from stepd.server.domain import (
    ClaimedRun,
    ErrorDetails,
    FailureReason,
    HistoryEntry,
    HistoryType,
    RunRecord,
    RunStatus,
    StepRow,
    WaitKind,
    WaitRow,
    WaitSpec,
    WorkflowLimits,
)
from stepd.server.engine.commands import (
    AcquireRate,
    Action,
    Command,
    CommandStatus,
    CompleteRun,
    FailRun,
    HoldRun,
    Malformed,
    PayloadIn,
    RecordEvent,
    RecordStep,
    ReleaseRun,
    StartChild,
    StartStep,
    SuspendRun,
)
from stepd.server.engine.errors import EngineError, InvalidArgument, ResourceExhausted
from stepd.server.engine.validation import (
    MAX_CACHED_RUNS,
    MAX_CAPACITY,
    MAX_EVENT_TRIGGERS,
    MAX_EXECUTION_TIMEOUT_MS,
    MAX_HELLO_VERSIONS,
    MAX_HELLO_WORKFLOWS,
    MAX_ID_LENGTH,
    check_name,
    check_text,
    shown,
)
from stepd.v1 import types_pb2, worker_service_pb2

STATUS_TO_PROTO = {
    RunStatus.PENDING: types_pb2.RUN_STATUS_PENDING,
    RunStatus.RUNNING: types_pb2.RUN_STATUS_RUNNING,
    RunStatus.SUSPENDED: types_pb2.RUN_STATUS_SUSPENDED,
    RunStatus.COMPLETED: types_pb2.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: types_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: types_pb2.RUN_STATUS_CANCELLED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}

REASON_TO_PROTO = {
    FailureReason.WORKFLOW_ERROR: types_pb2.FAILURE_REASON_WORKFLOW_ERROR,
    FailureReason.DEADLINE_EXCEEDED: types_pb2.FAILURE_REASON_DEADLINE_EXCEEDED,
    FailureReason.EXECUTION_TIMEOUT: types_pb2.FAILURE_REASON_EXECUTION_TIMEOUT,
    FailureReason.MAX_ENTRIES_EXCEEDED: types_pb2.FAILURE_REASON_MAX_ENTRIES_EXCEEDED,
    FailureReason.SERVER_ERROR: types_pb2.FAILURE_REASON_SERVER_ERROR,
    FailureReason.JOURNAL_TOO_LARGE: types_pb2.FAILURE_REASON_JOURNAL_TOO_LARGE,
}

COMMAND_STATUS_TO_PROTO = {
    CommandStatus.OK: worker_service_pb2.COMMAND_STATUS_OK,
    CommandStatus.DUPLICATE: worker_service_pb2.COMMAND_STATUS_DUPLICATE,
    CommandStatus.LEASE_LOST: worker_service_pb2.COMMAND_STATUS_LEASE_LOST,
    CommandStatus.INVALID: worker_service_pb2.COMMAND_STATUS_INVALID,
    CommandStatus.INTERNAL_ERROR: worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR,
}


def timestamp(ms: int | None) -> Timestamp | None:
    """Epoch milliseconds to a Timestamp (None stays None). A time outside the
    years a Timestamp holds (a wait of millennia from now) shows as the nearest
    one it holds, so that a stored time never makes a run unreadable."""
    if ms is None:
        return None
    ts = Timestamp()
    ts.FromMilliseconds(min(max(ms, MIN_TIMESTAMP_MS), MAX_TIMESTAMP_MS))
    return ts


#: The range of a Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MIN_TIMESTAMP_MS = MIN_TIMESTAMP_SECONDS * 1000
MAX_TIMESTAMP_MS = MAX_TIMESTAMP_SECONDS * 1000 + 999
#: The range of a Duration: about ±10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000
#: The largest count (attempt) a database integer column holds.
MAX_COUNT = 2**31 - 1
#: ErrorInfo texts from workers longer than these are cut (characters).
MAX_ERROR_TYPE = MAX_ID_LENGTH
MAX_ERROR_MESSAGE = 16 * 1024
MAX_ERROR_TRACEBACK = 64 * 1024


def timestamp_ms(ts: Timestamp, field: str, *, round_up: bool = False) -> int:
    """A Timestamp to epoch milliseconds; InvalidArgument naming ``field`` when it
    is outside the range a Timestamp may hold. ``round_up`` rounds up a partial
    millisecond instead of down."""
    seconds, nanos = ts.seconds, ts.nanos
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS or not 0 <= nanos < _NANOS:
        raise InvalidArgument(
            f"{field} is not a valid time: seconds must lie between years 1 and 9999 "
            "(-62135596800 to 253402300799) and nanos between 0 and 999999999"
        )
    step = 999_999 if round_up else 0
    # The last nanoseconds of year 9999 round up past the last millisecond a
    # Timestamp can show again: keep that one.
    return min(seconds * 1000 + (nanos + step) // 1_000_000, MAX_TIMESTAMP_MS)


def optional_ms(message: Message, name: str, field: str, *, round_up: bool = False) -> int | None:
    """The Timestamp field ``name`` of ``message`` in epoch milliseconds (a partial
    one rounded up with ``round_up``); None when unset."""
    if not message.HasField(name):
        return None
    value: Timestamp = getattr(message, name)
    return timestamp_ms(value, field, round_up=round_up)


def duration_seconds(duration: Duration, field: str) -> float:
    """A Duration in seconds; InvalidArgument naming ``field`` when it is out of range."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS
        or not -_NANOS < nanos < _NANOS
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    ):
        raise InvalidArgument(
            f"{field} is not a valid duration: seconds must lie within ±315576000000 "
            "and nanos within ±999999999, with the same sign"
        )
    return seconds + nanos / _NANOS


def duration_ms(duration: Duration, field: str) -> int:
    """A Duration in whole milliseconds (a partial one rounds up), checked as above."""
    duration_seconds(duration, field)
    nanos = duration.seconds * _NANOS + duration.nanos
    return -((-nanos) // 1_000_000)


def count(value: int, field: str) -> int:
    """An attempt or similar count, checked to fit the database's integers."""
    if value > MAX_COUNT:
        raise InvalidArgument(f"{field} is {value}; at most {MAX_COUNT}")
    return value


def payload_in(payload: types_pb2.Payload, field: str) -> PayloadIn:
    """A Payload as it arrived; InvalidArgument when ``data`` is set without an
    encoding that carries it (JSON travels in ``json``)."""
    if payload.data and payload.encoding in ("", "json"):
        raise InvalidArgument(
            f"{field}.data is set without an encoding this server accepts; "
            f"send JSON in {field}.json"
        )
    return PayloadIn(json=payload.json, encoding=payload.encoding)


def error_to_proto(err: ErrorDetails) -> types_pb2.ErrorInfo:
    """ErrorDetails to ErrorInfo."""
    return types_pb2.ErrorInfo(
        type=err.type,
        message=err.message,
        traceback=err.traceback,
        step_key=err.step_key,
        attempt=err.attempt,
    )


def _cut(text: str, limit: int) -> str:
    """Worker-reported error text, at most ``limit`` characters and without NULs."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def error_from_proto(info: types_pb2.ErrorInfo, field: str = "error") -> ErrorDetails:
    """ErrorInfo to ErrorDetails, its texts cut to the documented lengths."""
    return ErrorDetails(
        type=_cut(info.type, MAX_ERROR_TYPE) or "builtins.Exception",
        message=_cut(info.message, MAX_ERROR_MESSAGE),
        traceback=_cut(info.traceback, MAX_ERROR_TRACEBACK),
        step_key=_cut(info.step_key, MAX_ID_LENGTH),
        attempt=count(info.attempt, f"{field}.attempt"),
    )


def run_to_proto(run: RunRecord) -> types_pb2.Run:
    """A stored run to a Run message."""
    msg = types_pb2.Run(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=STATUS_TO_PROTO[run.status],
        input=types_pb2.Payload(json=run.input_json),
        parent_run_id=run.parent_run_id or "",
        root_run_id=run.root_run_id or run.run_id,
        idempotency_key=run.idempotency_key or "",
        create_time=timestamp(run.create_time),
        update_time=timestamp(run.update_time),
        start_time=timestamp(run.start_time),
        end_time=timestamp(run.end_time),
        deadline=timestamp(run.deadline),
        execution_deadline=timestamp(run.execution_deadline),
        dispatch_count=run.dispatch_count,
        cancel_reason=run.cancel_reason or "",
        scheduled_start_time=timestamp(run.start_time_not_before),
        schedule_id=run.schedule_id or "",
        schedule_time=timestamp(run.schedule_time),
        detached=run.detached,
        concurrency_limit=run.concurrency_name or "",
        concurrency_key=run.concurrency_key or "",
        priority=run.priority,
        debounce_key=run.debounce_key or "",
        forked_from_run_id=run.forked_from_run_id or "",
        forked_from_step_key=run.forked_from_step_key or "",
        retry_count=run.retry_count,
    )
    if run.progress_json is not None:
        msg.progress.json = run.progress_json
    if run.trace:
        msg.trace_context.traceparent = run.trace.parent
        msg.trace_context.tracestate = run.trace.state
    if run.held_error is not None:
        msg.held_error.CopyFrom(error_to_proto(run.held_error))
    if run.result_json is not None:
        msg.result.json = run.result_json
    if run.error is not None:
        msg.error.CopyFrom(error_to_proto(run.error))
    if run.failure_reason is not None:
        msg.failure_reason = REASON_TO_PROTO[run.failure_reason]
    return msg


def step_to_proto(step: StepRow) -> types_pb2.StepRecord:
    """A stored step outcome to a StepRecord."""
    msg = types_pb2.StepRecord(
        step_key=step.step_key,
        attempt=step.attempt,
        start_time=timestamp(step.start_time),
        end_time=timestamp(step.end_time),
        attempt_only=step.attempt_only,
    )
    if step.error is not None:
        msg.error.CopyFrom(error_to_proto(step.error))
    else:
        msg.result.json = step.result_json or "null"
    return msg


def wait_to_proto(wait: WaitRow) -> types_pb2.WaitResult:
    """A met wait to a WaitResult."""
    msg = types_pb2.WaitResult(
        wait_key=wait.wait_key, met_time=timestamp(wait.met_time), timed_out=wait.timed_out
    )
    if wait.payload_json is not None:
        msg.payload.json = wait.payload_json
    return msg


HISTORY_TO_PROTO = {
    t: types_pb2.RunEventType.Value(f"RUN_EVENT_TYPE_{t.name}") for t in HistoryType
}


def history_to_proto(sequence: int, entry: HistoryEntry) -> types_pb2.RunEvent:
    """One history entry (at its position in the run's history) to a RunEvent."""
    msg = types_pb2.RunEvent(
        sequence=sequence,
        time=timestamp(entry.time),
        type=HISTORY_TO_PROTO[entry.type],
        key=entry.key,
        name=entry.name,
        attempt=entry.attempt,
        detail=entry.detail,
        actor_key_id=entry.actor,
        attempt_only=entry.attempt_only,
    )
    if entry.payload_json is not None:
        msg.payload.json = entry.payload_json
    if entry.error is not None:
        msg.error.CopyFrom(error_to_proto(entry.error))
    if entry.step_start_time is not None:
        msg.step_start_time.FromMilliseconds(entry.step_start_time)
    if entry.step_end_time is not None:
        msg.step_end_time.FromMilliseconds(entry.step_end_time)
    return msg


def task_to_proto(claimed: ClaimedRun, sent_ms: int = 0) -> worker_service_pb2.RunTask:
    """A claimed run to the RunTask a worker executes, sent at ``sent_ms`` by the
    server's clock (0: not said)."""
    run = claimed.run
    return worker_service_pb2.RunTask(
        run_id=run.run_id,
        lease_id=run.lease_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        input=types_pb2.Payload(json=run.input_json),
        journal=sorted(
            [
                *(
                    types_pb2.JournalEntry(sequence=step.sequence, step=step_to_proto(step))
                    for step in claimed.journal
                ),
                *(
                    types_pb2.JournalEntry(sequence=wait.sequence, wait=wait_to_proto(wait))
                    for wait in claimed.waits
                ),
            ],
            key=lambda entry: entry.sequence,
        ),
        deadline=timestamp(run.deadline),
        dispatch_count=run.dispatch_count,
        parent_run_id=run.parent_run_id or "",
        root_run_id=run.root_run_id or run.run_id,
        hook_secret=claimed.hook_secret,
        continues_lease=claimed.continues_lease,
        trace_context=trace_context.to_message(run.trace),
        sent_time=timestamp(sent_ms or None),
    )


def _wait_from_proto(wait: worker_service_pb2.WaitCondition, index: int) -> WaitSpec:
    """A WaitCondition to a WaitSpec. A condition this server does not know
    becomes a timer without a time, which the engine rejects as INVALID."""
    where = f"suspend_run.waits[{index}]"
    check_name(f"{where}.wait_key", wait.wait_key)
    condition = wait.WhichOneof("condition")
    if condition == "hook":
        return WaitSpec(wait.wait_key, WaitKind.HOOK)
    if condition == "event":
        event = wait.event
        check_name(f"{where}.event.name", event.name)
        return WaitSpec(
            wait.wait_key,
            WaitKind.EVENT,
            target=event.name,
            match_json=event.match_json or None,
            since_time=optional_ms(event, "since", f"{where}.event.since"),
        )
    if condition == "child":
        check_name(f"{where}.child.run_id", wait.child.run_id)
        return WaitSpec(wait.wait_key, WaitKind.CHILD, target=wait.child.run_id)
    if condition == "signal":
        check_name(f"{where}.signal.name", wait.signal.name)
        return WaitSpec(wait.wait_key, WaitKind.SIGNAL, target=wait.signal.name)
    if condition == "timer":  # rounded up: a timer never fires early
        fire_ms = timestamp_ms(wait.timer.fire_time, f"{where}.timer.fire_time", round_up=True)
        return WaitSpec(wait.wait_key, WaitKind.TIMER, fire_ms)
    return WaitSpec(wait.wait_key, WaitKind.TIMER, None)


def _action_from_proto(msg: worker_service_pb2.WorkerCommand) -> Action | None:
    kind = msg.WhichOneof("command")
    if kind == "record_step":
        step = msg.record_step.step
        check_name("record_step.step.step_key", step.step_key)
        outcome = step.WhichOneof("outcome")
        return RecordStep(
            step=StepRow(
                step_key=step.step_key,
                attempt=count(step.attempt, "record_step.step.attempt") or 1,
                error=(
                    error_from_proto(step.error, "record_step.step.error")
                    if outcome == "error"
                    else None
                ),
                start_time=optional_ms(step, "start_time", "record_step.step.start_time"),
                end_time=optional_ms(step, "end_time", "record_step.step.end_time"),
                attempt_only=step.attempt_only,
            ),
            result=(
                payload_in(step.result, "record_step.step.result") if outcome != "error" else None
            ),
        )
    if kind == "complete_run":
        complete = msg.complete_run
        return CompleteRun(
            payload_in(complete.result, "complete_run.result"), complete.if_steps_recorded
        )
    if kind == "fail_run":
        fail = msg.fail_run
        return FailRun(error_from_proto(fail.error, "fail_run.error"), fail.if_steps_recorded)
    if kind == "release_run":
        check_text("release_run.reason", msg.release_run.reason)
        return ReleaseRun(msg.release_run.reason)
    if kind == "record_event":
        event = msg.record_event
        check_name("record_event.entry_key", event.entry_key)
        check_name("record_event.name", event.name)
        return RecordEvent(
            event.entry_key,
            event.name,
            payload_in(event.payload, "record_event.payload"),
            progress=event.progress,
        )
    if kind == "suspend_run":
        return SuspendRun(
            tuple(_wait_from_proto(w, i) for i, w in enumerate(msg.suspend_run.waits))
        )
    if kind == "start_step":
        start = msg.start_step
        check_name("start_step.step_key", start.step_key)
        return StartStep(
            start.step_key,
            count(start.attempt, "start_step.attempt") or 1,
            duration_ms(start.timeout, "start_step.timeout"),
        )
    if kind == "acquire_rate":
        rate = msg.acquire_rate
        check_name("acquire_rate.name", rate.name, required=True)
        check_name("acquire_rate.key", rate.key)
        check_name("acquire_rate.step_key", rate.step_key)
        return AcquireRate(
            rate.name,
            rate.key,
            rate.limit,
            duration_ms(rate.period, "acquire_rate.period"),
            rate.step_key,
        )
    if kind == "start_child":
        child = msg.start_child
        check_name("start_child.child_key", child.child_key)
        check_name("start_child.workflow_name", child.workflow_name)
        check_name("start_child.workflow_version", child.workflow_version)
        return StartChild(
            child.child_key,
            child.workflow_name,
            child.workflow_version,
            payload_in(child.input, "start_child.input"),
            child.detached,
            trace_context.from_message(child.trace_context, "start_child.trace_context"),
        )
    if kind == "hold_run":
        return HoldRun(error_from_proto(msg.hold_run.error, "hold_run.error"))
    return None


def command_from_proto(msg: worker_service_pb2.WorkerCommand) -> Command:
    """A WorkerCommand to the engine's Command (action None when unset). A command
    whose fields cannot be accepted becomes a ``Malformed`` action, which the
    engine answers INVALID in its turn among the run's commands."""
    try:
        check_name("run_id", msg.run_id)
        action = _action_from_proto(msg)
    except EngineError as exc:
        reason = f"{msg.WhichOneof('command') or 'command'}: {exc}"
        action = Malformed(reason, fails_run=msg.WhichOneof("command") != "record_event")
    return Command(msg.command_id, msg.run_id, msg.lease_id, action)


def workflow_limits(
    hello: worker_service_pb2.WorkerHello,
) -> dict[tuple[str, str], WorkflowLimits]:
    """The execution timeout and journal limit each registered version declares."""
    limits = {}
    for i, w in enumerate(hello.workflows):
        timeout_ms = None
        if w.HasField("execution_timeout"):
            field = f"hello.workflows[{i}].execution_timeout"
            timeout_ms = duration_ms(w.execution_timeout, field)
            if not 0 < timeout_ms <= MAX_EXECUTION_TIMEOUT_MS:
                raise InvalidArgument(
                    f"{field} must be longer than 0 and at most "
                    f"{MAX_EXECUTION_TIMEOUT_MS // 86_400_000} days"
                )
        limits[(w.name, w.version)] = WorkflowLimits(
            execution_timeout_ms=timeout_ms, max_entries=w.max_entries or None
        )
    return limits


def check_hello(hello: worker_service_pb2.WorkerHello) -> None:
    """Reject a hello whose names are missing, too long or hold NULs, whose counts
    pass their limits (ResourceExhausted) or whose capacity is out of range."""
    check_name("hello.worker_id", hello.worker_id, required=True)
    check_text("hello.identity", hello.identity)
    check_text("hello.sdk_version", hello.sdk_version)
    if not 1 <= hello.capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"hello.capacity must lie between 1 and {MAX_CAPACITY}")
    if hello.max_cached_runs > MAX_CACHED_RUNS:
        raise InvalidArgument(f"hello.max_cached_runs is at most {MAX_CACHED_RUNS}")
    if hello.early_capacity > MAX_CAPACITY:
        raise InvalidArgument(f"hello.early_capacity is at most {MAX_CAPACITY}")
    if len(hello.workflows) > MAX_HELLO_WORKFLOWS:
        raise ResourceExhausted(
            f"a hello registers at most {MAX_HELLO_WORKFLOWS} workflow versions; "
            "split the workflows across workers"
        )
    versions: Counter[str] = Counter()
    for i, w in enumerate(hello.workflows):
        check_name(f"hello.workflows[{i}].name", w.name, required=True)
        check_name(f"hello.workflows[{i}].version", w.version, required=True)
        versions[w.name] += 1
        if versions[w.name] > MAX_HELLO_VERSIONS:
            raise ResourceExhausted(
                f"a hello registers at most {MAX_HELLO_VERSIONS} versions of one workflow "
                f"({shown(w.name)})"
            )
        if len(w.event_triggers) > MAX_EVENT_TRIGGERS:
            raise ResourceExhausted(
                f"hello.workflows[{i}] declares {len(w.event_triggers)} event triggers; "
                f"at most {MAX_EVENT_TRIGGERS}"
            )
        for j, name in enumerate(w.event_triggers):
            if not name or len(name) > MAX_ID_LENGTH or "\x00" in name:  # say which
                check_name(f"hello.workflows[{i}].event_triggers[{j}]", name, required=True)
