"""Joins a run task the server sent in parts (``RunTask.journal_parts_remaining``).

A task too large for one stream message comes as consecutive RunTask messages
for the same run and lease: the first with every field, the others with the
next journal entries. The worker starts the run only once it has them all.
"""

from __future__ import annotations

from stepd.v1 import worker_service_pb2


class TaskParts:
    """The task being joined on one stream (parts of a task are never interleaved
    with another task, so there is at most one)."""

    def __init__(self) -> None:
        self._open: worker_service_pb2.RunTask | None = None

    def add(self, part: worker_service_pb2.RunTask) -> worker_service_pb2.RunTask | None:
        """Take the next task message; return the whole task once it is complete."""
        head = self._open
        if head is None or (head.run_id, head.lease_id) != (part.run_id, part.lease_id):
            # A new task (a half-joined one the server gave up on is dropped).
            self._open = None
            if part.journal_parts_remaining == 0:
                return part
            self._open = part
            return None
        head.journal.extend(part.journal)
        head.journal_parts_remaining = part.journal_parts_remaining
        if part.journal_parts_remaining:
            return None
        self._open = None
        return head
