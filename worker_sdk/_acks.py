"""The answers a run still waits for, of commands it sent without waiting.

Four kinds, each a set of the unanswered answers: recorded values (``now:N``,
``uuid:N``, ``random:N``), the starts of event waits (``event:N:since``), custom
history entries (``entry:N``) and step outcomes the workflow went on from (on a
server that applies a run's commands in order). While a value, a start or a step
outcome is unanswered the run is not quiescent; a run suspends only once every entry
is answered, and ends only once every value and entry is (its end may follow step
outcomes still unanswered: the server refuses it if one was not recorded).
"""

from __future__ import annotations

import asyncio

from stepd.v1 import worker_service_pb2

Answer = asyncio.Future[worker_service_pb2.CommandResult]


class Acks:
    """The unanswered commands of one run, by kind."""

    __slots__ = ("entries", "starts", "steps", "values")

    def __init__(self) -> None:
        self.values: set[Answer] = set()
        """Recorded values (``record_step`` of ``now:N`` ...) not answered yet."""
        self.starts: set[Answer] = set()
        """Starts of event waits (``record_step`` of ``event:N:since``) not answered yet."""
        self.entries: set[Answer] = set()
        """Custom entries (``record_event``) not answered yet."""
        self.steps: set[Answer] = set()
        """Step outcomes (``record_step``) the workflow went on from, not answered yet."""

    @property
    def blocking(self) -> bool:
        """True while a recorded value, an event wait's start or a step outcome is
        unanswered."""
        return bool(self.values) or bool(self.starts) or bool(self.steps)


async def all_answered(pending: set[Answer]) -> None:
    """Wait until ``pending`` is empty (each answer's callback removes it)."""
    while pending:
        await asyncio.wait(set(pending))
