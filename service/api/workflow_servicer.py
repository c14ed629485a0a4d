"""stepd.v1.WorkflowService: decode, call the engine, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from stepd.server import __version__
from stepd.server.api import page_tokens, trace_context
from stepd.server.api.convert import (
    STATUS_FROM_PROTO,
    duration_seconds,
    history_to_proto,
    optional_ms,
    payload_in,
    run_to_proto,
)
from stepd.server.api.convert_operations import (
    deadline_change,
    flow_limit_to_proto,
    page_of_flow_limits,
    page_of_workers,
    worker_to_proto,
)
from stepd.server.api.convert_runs import details_to_proto, update_to_proto
from stepd.server.api.convert_schedules import (
    decode_page_token,
    encode_page_token,
    schedule_to_proto,
    spec_from_proto,
)
from stepd.server.api.errors import Undecodable, client_status, maps_errors, server_fault
from stepd.server.domain import NO_TRACE, RunFilter, TraceContext
from stepd.server.engine.engine import Engine, TriggerParams
from stepd.server.engine.errors import EngineError, InvalidArgument
from stepd.server.engine.run_actions import BulkAction, ForkParams
from stepd.server.engine.validation import check_name, check_text
from stepd.server.security.principal import current_key_id, current_principal
from stepd.server.security.roles import Right
from stepd.v1 import operations_pb2 as ops
from stepd.v1 import workflow_service_pb2 as pb
from stepd.v1 import workflow_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

#: The header (initial metadata) a waiting Trigger sends once its run is stored.
RUN_ID_HEADER = "stepd-run-id"

FEATURES = (
    "json-payloads",
    "command-batches",
    "get-run-wait",
    "trigger-wait",
    "timers",
    "signals",
    "events",
    "hooks",
    "history",
    "step-attempts",
    "start-step",
    "run-expiry",
    "journal-limit",
    "event-triggers",
    "schedules",
    "delayed-start",
    "child-runs",
    "hold-run",
    "trace-context",
    "watch-run",
    "progress",
    "pending-waits",
    "retry-run",
    "fork-run",
    "delete-run",
    "bulk-actions",
    "list-workers",
)


def _may_see_hooks() -> bool:
    """Whether the caller may see hook tokens: it may execute hooks (or the
    server runs without keys)."""
    principal = current_principal()
    return principal is None or Right.EXECUTE_HOOK in principal.rights


def run_filter_from(request: pb.ListRunsRequest, prefix: str = "") -> RunFilter:
    """The run filter of a ListRunsRequest (ListRuns, and the bulk actions' ``filter``,
    whose fields errors name with ``prefix``)."""
    check_name(prefix + "workflow_name", request.workflow_name)
    check_name(prefix + "parent_run_id", request.parent_run_id)
    check_name(prefix + "idempotency_key", request.idempotency_key)
    check_name(prefix + "schedule_id", request.schedule_id)
    statuses = set()
    for value in request.statuses:
        if value not in STATUS_FROM_PROTO:
            raise InvalidArgument(f"{prefix}statuses contains an unknown status {value}")
        statuses.add(STATUS_FROM_PROTO[value])
    after, before = prefix + "create_time_after", prefix + "create_time_before"
    return RunFilter(
        workflow_name=request.workflow_name or None,
        statuses=frozenset(statuses) or None,
        parent_run_id=request.parent_run_id or None,
        create_time_after=optional_ms(request, "create_time_after", after),
        create_time_before=optional_ms(request, "create_time_before", before),
        idempotency_key=request.idempotency_key or None,
        schedule_id=request.schedule_id or None,
    )


class WorkflowServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """The client-facing API."""

    def __init__(
        self, engine: Engine, current_trace: Callable[[], TraceContext] = lambda: NO_TRACE
    ) -> None:
        self._engine = engine
        # The context of the call's server span, when tracing is on.
        self._current_trace = current_trace

    @maps_errors
    async def Trigger(self, request: pb.TriggerRequest, context: Context) -> pb.TriggerResponse:
        check_name("workflow_name", request.workflow_name, required=True)
        check_name("workflow_version", request.workflow_version)
        check_name("idempotency_key", request.idempotency_key)
        check_name("concurrency_key", request.concurrency_key)
        check_name("debounce_key", request.debounce_key)
        payload = payload_in(request.input, "input")
        wait_seconds = _wait_seconds(request)  # checked before anything is stored
        if request.HasField("trace_context"):
            trace = trace_context.from_message(request.trace_context, "trace_context")
        else:
            trace = self._current_trace() or trace_context.from_metadata(
                context.invocation_metadata()
            )
        triggered = await self._engine.trigger(
            TriggerParams(
                workflow_name=request.workflow_name,
                workflow_version=request.workflow_version,
                input_json=payload.json,
                input_encoding=payload.encoding,
                run_id=request.run_id,
                idempotency_key=request.idempotency_key,
                deadline=optional_ms(request, "deadline", "deadline", round_up=True),
                start_time_not_before=optional_ms(
                    request, "start_time", "start_time", round_up=True
                ),
                concurrency_key=request.concurrency_key or None,
                priority=request.priority if request.HasField("priority") else None,
                debounce_key=request.debounce_key or None,
                trace=trace,
            )
        )
        run = triggered.run
        if request.wait:
            # The run is stored: say so (and which) before the wait, so that a
            # caller whose call breaks while waiting knows to look for it.
            await context.send_initial_metadata(((RUN_ID_HEADER, run.run_id),))
            run = await self._engine.get_run(run.run_id, wait=True, wait_seconds=wait_seconds)
        return pb.TriggerResponse(
            run=run_to_proto(run),
            already_existed=triggered.already_existed,
            debounced=triggered.debounced,
        )

    @maps_errors
    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        check_name("run_id", request.run_id, required=True)
        details = await self._engine.describe_run(
            request.run_id,
            wait=request.wait,
            wait_seconds=_wait_seconds(request),
            hook_tokens=_may_see_hooks(),
        )
        response = details_to_proto(details)
        response.run.waiting_reason = await self._engine.waiting_reason(details.run)
        return response

    @maps_errors
    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        check_text("page_token", request.page_token)
        run_filter = run_filter_from(request)
        cursor = page_tokens.decode(request.page_token, run_filter)
        runs, next_cursor = await self._engine.list_runs(
            run_filter, request.page_size, cursor, payloads=request.include_payloads
        )
        token = page_tokens.encode(next_cursor, run_filter) if next_cursor is not None else ""
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    @maps_errors
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Context
    ) -> pb.CancelRunResponse:
        check_name("run_id", request.run_id, required=True)
        check_text("reason", request.reason)
        run, already = await self._engine.cancel_run(
            request.run_id, request.reason, actor=current_key_id()
        )
        return pb.CancelRunResponse(run=run_to_proto(run), already_cancelled=already)

    @maps_errors
    async def Signal(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:
        check_name("run_id", request.run_id, required=True)
        check_name("name", request.name, required=True)
        check_name("request_id", request.request_id)
        payload = payload_in(request.payload, "payload")
        await self._engine.signal(
            request.run_id,
            request.name,
            payload.json,
            payload.encoding,
            request.request_id,
            actor=current_key_id(),
        )
        return pb.SignalResponse(run_id=request.run_id)

    @maps_errors
    async def PublishEvent(
        self, request: pb.PublishEventRequest, context: Context
    ) -> pb.PublishEventResponse:
        check_name("name", request.name, required=True)
        check_name("event_id", request.event_id)
        payload = payload_in(request.payload, "payload")
        event_id, already, woken, started = await self._engine.publish_event(
            request.name, payload.json, payload.encoding, request.event_id, actor=current_key_id()
        )
        return pb.PublishEventResponse(
            event_id=event_id,
            already_published=already,
            woken_run_ids=woken,
            started_run_ids=started,
        )

    @maps_errors
    async def ListRunEvents(
        self, request: pb.ListRunEventsRequest, context: Context
    ) -> pb.ListRunEventsResponse:
        check_name("run_id", request.run_id, required=True)
        check_text("page_token", request.page_token)
        cursor = page_tokens.decode_history(request.page_token, request.run_id)
        page, after = await self._engine.run_history(request.run_id, request.page_size, cursor)
        token = page_tokens.encode_history(after, request.run_id) if after is not None else ""
        return pb.ListRunEventsResponse(
            events=[history_to_proto(position, entry) for position, entry in page],
            next_page_token=token,
        )

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            check_name("run_id", request.run_id, required=True)
            check_text("page_token", request.page_token)
            cursor = page_tokens.decode_history(request.page_token, request.run_id)
            async for update in self._engine.watch_run(request.run_id, cursor):
                yield update_to_proto(request.run_id, update)
            return
        except EngineError as exc:
            code, message = client_status(exc, "WatchRun")
        except Exception:
            code, message = server_fault("WatchRun", request)
        await context.abort(code, message)

    @maps_errors
    async def ExecuteHook(
        self, request: pb.ExecuteHookRequest, context: Context
    ) -> pb.ExecuteHookResponse:
        check_text("token", request.token)
        payload = payload_in(request.payload, "payload")
        run_id = await self._engine.execute_hook(
            request.token, payload.json, payload.encoding, actor=current_key_id()
        )
        return pb.ExecuteHookResponse(run_id=run_id)

    @maps_errors
    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        return pb.GetServerInfoResponse(
            server_version=__version__,
            max_payload_bytes=self._engine.config.max_payload_bytes,
            features=list(FEATURES),
        )

    # -- schedules --------------------------------------------------------------

    @maps_errors
    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        check_name("schedule_id", request.schedule_id)
        check_name("workflow_name", request.workflow_name, required=True)
        check_name("workflow_version", request.workflow_version)
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required (at least spec.cron)")
        view, existed = await self._engine.schedules.create(
            request.schedule_id,
            request.workflow_name,
            request.workflow_version,
            spec_from_proto(request.spec, "spec"),
            request.paused,
        )
        return pb.CreateScheduleResponse(schedule=schedule_to_proto(view), already_existed=existed)

    @maps_errors
    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        check_name("schedule_id", request.schedule_id, required=True)
        view = await self._engine.schedules.get(request.schedule_id, request.recent_runs)
        return pb.GetScheduleResponse(schedule=schedule_to_proto(view))

    @maps_errors
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        check_name("workflow_name", request.workflow_name)
        check_text("page_token", request.page_token)
        after = decode_page_token(request.page_token, request.workflow_name)
        views, last = await self._engine.schedules.list_page(
            request.workflow_name, request.page_size, after
        )
        token = encode_page_token(last, request.workflow_name) if last is not None else ""
        return pb.ListSchedulesResponse(
            schedules=[schedule_to_proto(v) for v in views], next_page_token=token
        )

    @maps_errors
    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        check_name("schedule_id", request.schedule_id, required=True)
        view = await self._engine.schedules.pause(request.schedule_id)
        return pb.PauseScheduleResponse(schedule=schedule_to_proto(view))

    @maps_errors
    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        check_name("schedule_id", request.schedule_id, required=True)
        view = await self._engine.schedules.resume(request.schedule_id)
        return pb.ResumeScheduleResponse(schedule=schedule_to_proto(view))

    @maps_errors
    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        check_name("schedule_id", request.schedule_id, required=True)
        await self._engine.schedules.delete(request.schedule_id)
        return pb.DeleteScheduleResponse(schedule_id=request.schedule_id)

    @maps_errors
    async def TriggerSchedule(
        self, request: pb.TriggerScheduleRequest, context: Context
    ) -> pb.TriggerScheduleResponse:
        check_name("schedule_id", request.schedule_id, required=True)
        check_name("request_id", request.request_id)
        outcome = await self._engine.schedules.trigger(request.schedule_id, request.request_id)
        response = pb.TriggerScheduleResponse(skipped=outcome.run is None)
        if outcome.run is not None:
            response.run.CopyFrom(run_to_proto(outcome.run))
        return response

    # -- operator actions on runs (docs/operating-runs.md) ----------------------

    @maps_errors
    async def RetryRun(
        self, request: ops.RetryRunRequest, context: Context
    ) -> ops.RetryRunResponse:
        check_name("run_id", request.run_id, required=True)
        check_text("reason", request.reason)
        run = await self._engine.actions.retry(
            request.run_id, deadline_change(request), reason=request.reason, actor=current_key_id()
        )
        return ops.RetryRunResponse(run=run_to_proto(run))

    @maps_errors
    async def ForkRun(self, request: ops.ForkRunRequest, context: Context) -> ops.ForkRunResponse:
        check_name("run_id", request.run_id, required=True)
        check_name("step_key", request.step_key, required=True)
        check_name("workflow_version", request.workflow_version)
        run, existed = await self._engine.actions.fork(
            ForkParams(
                run_id=request.run_id,
                step_key=request.step_key,
                new_run_id=request.new_run_id,
                workflow_version=request.workflow_version,
                request_id=request.request_id,
                deadline=optional_ms(request, "deadline", "deadline", round_up=True),
            ),
            actor=current_key_id(),
        )
        return ops.ForkRunResponse(run=run_to_proto(run), already_existed=existed)

    @maps_errors
    async def DeleteRun(
        self, request: ops.DeleteRunRequest, context: Context
    ) -> ops.DeleteRunResponse:
        check_name("run_id", request.run_id, required=True)
        await self._engine.actions.delete(request.run_id)
        return ops.DeleteRunResponse(run_id=request.run_id)

    @maps_errors
    async def CancelRuns(
        self, request: pb.CancelRunsRequest, context: Context
    ) -> pb.CancelRunsResponse:
        check_text("reason", request.reason)
        result = await self._bulk(BulkAction.CANCEL, request, request.reason)
        return pb.CancelRunsResponse(**result)

    @maps_errors
    async def RetryRuns(
        self, request: pb.RetryRunsRequest, context: Context
    ) -> pb.RetryRunsResponse:
        check_text("reason", request.reason)
        result = await self._bulk(BulkAction.RETRY, request, request.reason)
        return pb.RetryRunsResponse(**result)

    async def _bulk(
        self, action: BulkAction, request: pb.CancelRunsRequest | pb.RetryRunsRequest, reason: str
    ) -> dict[str, Any]:
        check_text("page_token", request.page_token)
        run_filter = run_filter_from(request.filter, "filter.")
        cursor = page_tokens.decode(request.page_token, run_filter)
        result = await self._engine.actions.bulk(
            action,
            run_filter,
            dry_run=request.dry_run,
            batch_size=request.batch_size,
            before_seq=cursor,
            reason=reason,
            actor=current_key_id(),
        )
        token = "" if result.next_seq is None else page_tokens.encode(result.next_seq, run_filter)
        return {
            "matched": result.matched,
            "changed": result.changed,
            "skipped": result.skipped,
            "next_page_token": token,
        }

    @maps_errors
    async def ListWorkers(
        self, request: ops.ListWorkersRequest, context: Context
    ) -> ops.ListWorkersResponse:
        check_text("page_token", request.page_token)
        workers, after = page_of_workers(
            await self._engine.workers.list(), request.page_size, request.page_token
        )
        return ops.ListWorkersResponse(
            workers=[worker_to_proto(w) for w in workers], next_page_token=after
        )

    @maps_errors
    async def ListFlowLimits(
        self, request: ops.ListFlowLimitsRequest, context: Context
    ) -> ops.ListFlowLimitsResponse:
        check_text("page_token", request.page_token)
        limits, after = page_of_flow_limits(
            await self._engine.flow_limits(), request.page_size, request.page_token
        )
        return ops.ListFlowLimitsResponse(
            limits=[flow_limit_to_proto(limit) for limit in limits], next_page_token=after
        )


def _wait_seconds(request: pb.TriggerRequest | pb.GetRunRequest) -> float | None:
    """A request's ``wait_timeout`` in seconds (None: unset, the server's cap)."""
    if not request.HasField("wait_timeout"):
        return None
    seconds = duration_seconds(request.wait_timeout, "wait_timeout")
    if seconds < 0:
        raise InvalidArgument("wait_timeout must not be negative")
    return seconds
