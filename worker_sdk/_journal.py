"""A run's journal as replay takes it: recorded steps, failed attempts and met waits.

A call takes its entry by key when it is made. Met waits are delivered one at a time
in the order they were met (``met_time``, then journal order), each when the run is
quiescent: just as the server met them, one per suspension. New work (a step or a
child the journal does not hold) waits at the *gate* while the journal still holds
records no call took: the code that wrote them may still call them (another branch
of a gather), or the code changed, which the quiescence check then finds.

A sleep the server met a little before its time (its ``met_time`` is later than the
task's ``sent_time``) keeps a *not before*: the local monotonic time it may go on,
``met_time - sent_time`` after the task arrived, so neither clock's offset can make
it early.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable

from stepd.v1 import types_pb2


def _met_time_ns(wait: types_pb2.WaitResult) -> int:
    return wait.met_time.ToNanoseconds() if wait.HasField("met_time") else 0


class Journal:
    """The entries of a run's journal that no call took yet, and the gate of new work."""

    __slots__ = (
        "_attempts",
        "_gate",
        "_met",
        "_met_order",
        "_not_before",
        "_on_taken",
        "_records",
        "gated",
    )

    def __init__(
        self,
        entries: Iterable[types_pb2.JournalEntry],
        on_taken: Callable[[], None],
        sent_time_ns: int = 0,
    ) -> None:
        """``on_taken`` is called when a call took the last record (the gate opens);
        ``sent_time_ns`` is the task's ``sent_time`` (0: not given)."""
        self._records: dict[str, types_pb2.StepRecord] = {}  # recorded steps and values, by key
        # Failed attempts that are not a step's outcome (retried), by step key, in order.
        self._attempts: dict[str, list[types_pb2.StepRecord]] = {}
        self._met: dict[str, types_pb2.WaitResult] = {}  # met waits not delivered, by key
        self._met_order: deque[str] = deque()  # their keys in the order they were met
        self._not_before: dict[str, float] = {}  # waits met early: when they may go on
        self._gate: asyncio.Future[None] | None = None
        self._on_taken = on_taken
        self.gated: list[str] = []
        """Keys of the new steps and children waiting at the gate."""
        self.add(entries, sent_time_ns)

    def add(self, entries: Iterable[types_pb2.JournalEntry], sent_time_ns: int = 0) -> None:
        """Take journal entries in: recorded steps, failed attempts, met waits (of a
        task the server sent at ``sent_time_ns``, 0: not said)."""
        met: list[types_pb2.WaitResult] = []
        for entry in entries:
            kind = entry.WhichOneof("entry")
            if kind == "step" and entry.step.attempt_only:
                self._attempts.setdefault(entry.step.step_key, []).append(entry.step)
            elif kind == "step":
                self._records[entry.step.step_key] = entry.step
            elif kind == "wait" and entry.wait.wait_key not in self._met:
                self._met[entry.wait.wait_key] = entry.wait
                met.append(entry.wait)
        for attempts in self._attempts.values():
            attempts.sort(key=lambda record: record.attempt)
        met.sort(key=_met_time_ns)  # stable
        self._met_order.extend(wait.wait_key for wait in met)
        if sent_time_ns:
            arrived = time.monotonic()
            for wait in met:
                ahead_ns = _met_time_ns(wait) - sent_time_ns
                if ahead_ns > 0:
                    self._not_before[wait.wait_key] = arrived + ahead_ns / 1e9

    # -- records: steps, values, children, failed attempts ----------------------

    @property
    def has_records(self) -> bool:
        """True while a recorded step (or value, child, ...) or failed attempt is left."""
        return bool(self._records) or bool(self._attempts)

    @property
    def has_leftovers(self) -> bool:
        """True while any entry is left: a record, a failed attempt or a met wait."""
        return bool(self._records) or bool(self._met) or bool(self._attempts)

    def take(self, key: str) -> types_pb2.StepRecord | None:
        """Take the record of ``key`` (a step's outcome, a value, a child's start, ...)."""
        record = self._records.pop(key, None)
        if record is not None:
            self._after_take()
        return record

    def take_attempts(self, key: str) -> list[types_pb2.StepRecord]:
        """Take the failed attempts of step ``key``, oldest first (empty: none)."""
        failed = self._attempts.pop(key, None)
        if failed is None:
            return []
        self._after_take()
        return failed

    def _after_take(self) -> None:
        if not self._records and not self._attempts:
            self.open_gate()
            self._on_taken()

    def leftovers(self) -> list[str]:
        """The keys of every entry left, records first."""
        return [*sorted(self._records), *sorted(self._attempts), *sorted(self._met)]

    def next_records(self) -> list[str]:
        """The keys of the records left, in journal order."""
        return [*self._records, *(key for key in self._attempts if key not in self._records)]

    # -- met waits ------------------------------------------------------------------

    def is_met(self, key: str) -> bool:
        """True when wait ``key`` is met and not delivered yet."""
        return key in self._met

    @property
    def next_met(self) -> str | None:
        """The key of the next met wait to deliver, if any."""
        return self._met_order[0] if self._met_order else None

    def take_next_met(self) -> tuple[str, types_pb2.WaitResult]:
        """Take the next met wait (there must be one)."""
        key = self._met_order.popleft()
        return key, self._met.pop(key)

    @property
    def waits_out_early(self) -> bool:
        """True while a wait met early was not taken yet (see ``not_before``)."""
        return bool(self._not_before)

    def not_before(self, key: str) -> float | None:
        """For a wait the server met before its time: the ``time.monotonic()`` from
        which the code may go on past it (taken: asked once); None otherwise."""
        return self._not_before.pop(key, None)

    # -- the gate ---------------------------------------------------------------------

    def gate(self) -> asyncio.Future[None]:
        """The future new work awaits while records are left (resolved when none is)."""
        gate = self._gate
        if gate is None or gate.done():
            gate = self._gate = asyncio.get_running_loop().create_future()
        return gate

    def open_gate(self) -> None:
        """Let the new work at the gate go on (it checks the journal again)."""
        gate = self._gate
        if gate is not None and not gate.done():
            gate.set_result(None)
