"""What the operator calls of ``Client`` return: ``BulkResult`` (``cancel_runs``,
``retry_runs``) and ``WorkerInfo`` (``list_workers``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from stepd.v1 import operations_pb2

__all__ = ["BulkResult", "WorkerInfo"]


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action did (or, as a dry run, would do).

    ``matched`` is how many runs the dry run counted, or how many runs the
    batches looked at; ``changed`` how many were cancelled or retried;
    ``skipped`` those that had moved meanwhile (nothing done to them).
    """

    matched: int
    changed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker stream connected to the server (to any of its replicas)."""

    session_id: str
    """The stream's id (unique per connection)."""
    worker_id: str
    identity: str
    """How the worker named itself (e.g. host and process id)."""
    workflows: tuple[tuple[str, str], ...]
    """The (workflow name, version) pairs it serves."""
    capacity: int
    runs_held: int
    last_heartbeat: datetime | None
    """When the server last heard from it."""
    connect_time: datetime | None
    replica_id: str
    """The server replica it is connected to."""
    draining: bool = False


def worker_info(message: operations_pb2.WorkerInfo) -> WorkerInfo:
    """Decode a ``stepd.v1.WorkerInfo``."""
    return WorkerInfo(
        session_id=message.session_id,
        worker_id=message.worker_id,
        identity=message.identity,
        workflows=tuple((w.name, w.version) for w in message.workflows),
        capacity=message.capacity,
        runs_held=message.runs_held,
        last_heartbeat=(
            message.last_heartbeat_time.ToDatetime(tzinfo=UTC)
            if message.HasField("last_heartbeat_time")
            else None
        ),
        connect_time=(
            message.connect_time.ToDatetime(tzinfo=UTC)
            if message.HasField("connect_time")
            else None
        ),
        replica_id=message.replica_id,
        draining=message.draining,
    )
