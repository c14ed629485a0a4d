"""Run details and live run updates to their messages (GetRun's extras, WatchRun)."""

from __future__ import annotations

from stepd.server.api import page_tokens
from stepd.server.api.convert import history_to_proto, run_to_proto, timestamp
from stepd.server.domain import WaitKind
from stepd.server.engine.run_details import PendingWait, RunDetails
from stepd.server.engine.watch import WatchUpdate
from stepd.v1 import workflow_service_pb2 as pb

_KIND_TO_PROTO = {
    WaitKind.TIMER: pb.PENDING_WAIT_KIND_TIMER,
    WaitKind.SIGNAL: pb.PENDING_WAIT_KIND_SIGNAL,
    WaitKind.EVENT: pb.PENDING_WAIT_KIND_EVENT,
    WaitKind.HOOK: pb.PENDING_WAIT_KIND_HOOK,
    WaitKind.CHILD: pb.PENDING_WAIT_KIND_CHILD,
}


def pending_wait_to_proto(wait: PendingWait) -> pb.PendingWait:
    """One pending wait to its message."""
    return pb.PendingWait(
        wait_key=wait.wait_key,
        kind=_KIND_TO_PROTO[wait.kind],
        since=timestamp(wait.since),
        fire_time=timestamp(wait.fire_time),
        deadline=timestamp(wait.deadline),
        name=wait.name,
        match_json=wait.match_json,
        hook_token=wait.hook_token,
        child_run_id=wait.child_run_id,
    )


def details_to_proto(details: RunDetails) -> pb.GetRunResponse:
    """A run with its pending waits to a GetRunResponse."""
    return pb.GetRunResponse(
        run=run_to_proto(details.run),
        pending_waits=[pending_wait_to_proto(w) for w in details.pending_waits],
        no_worker=details.no_worker,
    )


def update_to_proto(run_id: str, update: WatchUpdate) -> pb.WatchRunResponse:
    """One watch update to a WatchRunResponse (the run without its input)."""
    response = pb.WatchRunResponse(
        events=[history_to_proto(position, entry) for position, entry in update.entries],
        resume_token=page_tokens.encode_history(update.cursor, run_id),
    )
    if update.run is not None:
        response.run.CopyFrom(run_to_proto(update.run))
        response.run.ClearField("input")
    return response
