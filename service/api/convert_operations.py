"""Conversions for the operator calls: retry's deadline, workers and flow-control
limits and their pages."""

from __future__ import annotations

import base64

from stepd.server.api.convert import optional_ms, timestamp
from stepd.server.domain import WorkerInfo
from stepd.server.domain_flow import FlowLimitKind, FlowLimitState
from stepd.server.engine.errors import InvalidArgument
from stepd.server.store.run_actions import DeadlineChange
from stepd.v1 import operations_pb2 as ops

#: ListWorkers pages: by default, and at most.
DEFAULT_WORKER_PAGE = 100
MAX_WORKER_PAGE = 1000


def deadline_change(request: ops.RetryRunRequest) -> DeadlineChange:
    """What a RetryRunRequest does to the run's deadline."""
    new = optional_ms(request, "deadline", "deadline", round_up=True)
    if request.clear_deadline and new is not None:
        raise InvalidArgument("give either deadline or clear_deadline, not both")
    if request.clear_deadline:
        return DeadlineChange(keep=False, deadline=None)
    if new is not None:
        return DeadlineChange(keep=False, deadline=new)
    return DeadlineChange()


def worker_to_proto(worker: WorkerInfo) -> ops.WorkerInfo:
    """A connected worker to a WorkerInfo message."""
    return ops.WorkerInfo(
        session_id=worker.session_id,
        worker_id=worker.worker_id,
        identity=worker.identity,
        workflows=[ops.WorkflowRef(name=n, version=v) for n, v in worker.workflows],
        capacity=worker.capacity,
        runs_held=worker.runs_held,
        last_heartbeat_time=timestamp(worker.last_seen),
        connect_time=timestamp(worker.connect_time) if worker.connect_time else None,
        replica_id=worker.replica_id,
        draining=worker.draining,
    )


def page_of_workers(
    workers: list[WorkerInfo], page_size: int, page_token: str
) -> tuple[list[WorkerInfo], str]:
    """One page of workers (sorted by session id) after the token's session id, and
    the token of the next page ("" on the last)."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    size = min(page_size or DEFAULT_WORKER_PAGE, MAX_WORKER_PAGE)
    after = ""
    if page_token:
        try:
            after = base64.urlsafe_b64decode(page_token.encode()).decode()
        except ValueError:
            raise InvalidArgument(
                "page_token is malformed; pass a next_page_token unchanged"
            ) from None
    remaining = [w for w in workers if w.session_id > after]
    page = remaining[:size]
    more = len(remaining) > size
    token = base64.urlsafe_b64encode(page[-1].session_id.encode()).decode() if more else ""
    return page, token


_FLOW_KINDS = {
    FlowLimitKind.CONCURRENCY: ops.FLOW_LIMIT_KIND_CONCURRENCY,
    FlowLimitKind.START_RATE: ops.FLOW_LIMIT_KIND_START_RATE,
    FlowLimitKind.STEP_RATE: ops.FLOW_LIMIT_KIND_STEP_RATE,
    FlowLimitKind.DEBOUNCE: ops.FLOW_LIMIT_KIND_DEBOUNCE,
}


def flow_limit_to_proto(state: FlowLimitState) -> ops.FlowLimit:
    """A flow-control limit and its queue to a FlowLimit message."""
    return ops.FlowLimit(
        kind=_FLOW_KINDS[state.kind],
        name=state.name,
        workflows=state.workflows,
        setting=state.setting,
        active_runs=state.active_runs,
        waiting=state.waiting,
        keys_waiting=state.keys_waiting,
    )


def page_of_flow_limits(
    limits: list[FlowLimitState], page_size: int, page_token: str
) -> tuple[list[FlowLimitState], str]:
    """One page of limits (in the order given) after the token's position, and the
    token of the next page ("" on the last)."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    size = min(page_size or DEFAULT_WORKER_PAGE, MAX_WORKER_PAGE)
    start = 0
    if page_token:
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode())
        except ValueError:
            raise InvalidArgument(
                "page_token is malformed; pass a next_page_token unchanged"
            ) from None
    page = limits[start : start + size]
    more = len(limits) > start + size
    token = base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else ""
    return page, token
