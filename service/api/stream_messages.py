"""What the server queued for a worker, as PollTask stream messages that each
stay under a byte budget.

A message over gRPC's limit cannot be sent at all: the stream fails, and so
would every later hand-out of that run (and of the runs sharing its message).
So items are packed into messages of at most ``max_bytes``, and a run task
larger than that is sent in parts (``RunTask.journal_parts_remaining``): its
journal split across consecutive messages that the worker joins.
"""

from __future__ import annotations

from stepd.server.api.convert import COMMAND_STATUS_TO_PROTO, step_to_proto, task_to_proto
from stepd.server.engine.commands import CommandResult
from stepd.server.engine.sessions import Cancellation, Outgoing
from stepd.v1 import worker_service_pb2 as pb

#: The most bytes one PollTaskResponse carries (a single item larger than this,
#: which no limit lets happen, goes alone): well under the 64 MiB gRPC limit.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Room for a field's tag and length prefix in its message.
_FRAMING = 16


def responses(
    batch: list[Outgoing], max_bytes: int = MAX_RESPONSE_BYTES, *, now_ms: int = 0
) -> list[pb.PollTaskResponse]:
    """Everything queued for a worker, in order, as messages of at most ``max_bytes``;
    tasks say they were sent at ``now_ms`` (the server's clock; 0: not said)."""
    out: list[pb.PollTaskResponse] = []
    current = pb.PollTaskResponse()
    size = 0

    def flush() -> None:
        nonlocal current, size
        if size:
            out.append(current)
            current, size = pb.PollTaskResponse(), 0

    for item in batch:
        if isinstance(item, CommandResult):
            result = pb.CommandResult(
                command_id=item.command_id,
                status=COMMAND_STATUS_TO_PROTO[item.status],
                message=item.message,
            )
            if item.recorded_step is not None:
                result.recorded_step.CopyFrom(step_to_proto(item.recorded_step))
            if item.start_after_ms:
                result.start_after.FromMilliseconds(item.start_after_ms)
            piece = result.ByteSize() + _FRAMING
            if size + piece > max_bytes:
                flush()
            current.results.append(result)
            size += piece
        elif isinstance(item, Cancellation):
            cancellation = pb.RunCancellation(
                run_id=item.run_id, lease_id=item.lease_id, reason=item.reason
            )
            piece = cancellation.ByteSize() + _FRAMING
            if size + piece > max_bytes:
                flush()
            current.cancellations.append(cancellation)
            size += piece
        else:
            task = task_to_proto(item, now_ms)
            piece = task.ByteSize() + _FRAMING
            if piece <= max_bytes:
                if size + piece > max_bytes:
                    flush()
                current.tasks.append(task)
                size += piece
                continue
            flush()
            out.extend(pb.PollTaskResponse(tasks=[part]) for part in task_parts(task, max_bytes))
    flush()
    return out


def task_parts(task: pb.RunTask, max_bytes: int) -> list[pb.RunTask]:
    """``task`` split into parts of at most about ``max_bytes`` each: the first
    has every field and the first journal entries, the others only the run,
    the lease and the next entries (see ``RunTask.journal_parts_remaining``)."""
    entries = list(task.journal)
    head = pb.RunTask()
    head.CopyFrom(task)
    del head.journal[:]
    parts = [head]
    size = head.ByteSize()
    for entry in entries:
        piece = entry.ByteSize() + _FRAMING
        if size + piece > max_bytes and len(parts[-1].journal):
            parts.append(pb.RunTask(run_id=task.run_id, lease_id=task.lease_id))
            size = parts[-1].ByteSize()
        parts[-1].journal.append(entry)
        size += piece
    for remaining, part in enumerate(reversed(parts)):
        part.journal_parts_remaining = remaining
    return parts
