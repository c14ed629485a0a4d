"""What a run records without waiting for the answer: recorded values and custom
history entries.

``ctx.now()``, ``ctx.uuid()`` and ``ctx.random()`` take the key ``KIND:N`` when
called and return the journal's value for it; without one they return a new value
and record it (``record_step``). Such a record is sent once every record of the
journal was taken (a replay reads values back before it records any), and every
later record of the run, and its end, waits until it is acknowledged.

Custom entries (``ctx.record`` / ``ctx.log``) take the key ``entry:N`` and are sent
at once (``record_event``); the run completes, fails or suspends only once every one
is acknowledged. A replay sends them again under the same keys; the server keeps the
first. An entry the server refuses as INVALID (e.g. over the payload limit) is
dropped with an error in the log; the run goes on.

Nothing is sent once the run stopped executing (suspended, held, finishing or given
up): the execution that reaches that point again sends it (the key is the same).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from stepd import _commands as commands
from stepd._acks import Acks, Answer, all_answered
from stepd._control import RunControl
from stepd._journal import Journal
from stepd._keys import Keys
from stepd._serde import dumps, loads, payload_text
from stepd._settle import Settler

logger = logging.getLogger("stepd.worker")


class Values:
    """The run's recorded values: ``ctx.now()``, ``ctx.uuid()``, ``ctx.random()``."""

    __slots__ = ("_acks", "_clock", "_held_back", "_journal", "_keys", "_run", "_settler")

    def __init__(
        self,
        run: RunControl,
        journal: Journal,
        keys: Keys,
        acks: Acks,
        settler: Settler,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._clock = clock  # the time in epoch ns: when a value was recorded
        self._run = run
        self._journal = journal
        self._keys = keys
        self._acks = acks
        self._settler = settler
        # Records made while the journal still held records no call took: sent once
        # it holds none (flush()).
        self._held_back: list[commands.Command] = []

    def call(self, kind: str, make: Callable[[], Any]) -> Any:
        """Assign the call its key now (``KIND:N``); return the journal's value for it,
        or ``make()``, recorded (``record_step``, not awaited here)."""
        key = self._keys.key(kind)
        self._settler.touch()
        record = self._journal.take(key)
        if record is not None:
            return loads(payload_text(record.result))
        value = make()
        if not self._run.phase.executing:
            return value  # the run is ending: the execution that gets here again records it
        command = commands.record_value(key, dumps(value), self._clock())
        if self._journal.has_records:
            self._held_back.append(command)
        else:
            self._send(command)
        return value

    def flush(self) -> None:
        """Send the records held back (the journal's records are all taken)."""
        held_back, self._held_back = self._held_back, []
        for command in held_back:
            self._send(command)

    async def acknowledged(self) -> None:
        """Send the records held back and wait until every recorded value is
        acknowledged, so that nothing recorded after a value can outlive it."""
        self.flush()
        await all_answered(self._acks.values)
        self._run.check_live()

    def _send(self, command: commands.Command) -> None:
        answer = self._run.send(command)
        if answer is None:  # the channel is closed: the run is lost to this worker
            return
        self._acks.values.add(answer)
        answer.add_done_callback(self._answered)

    def _answered(self, answer: Answer) -> None:
        self._acks.values.discard(answer)
        self._settler.touch()
        run = self._run
        if answer.cancelled() or run.phase.gone:
            return
        result = answer.result()
        if result.status == commands.OK:
            self._settler.check()
            return
        if result.status != commands.LEASE_LOST:
            # DUPLICATE: another value was recorded first and this execution used its
            # own; give the run up, the next execution reads the recorded one.
            logger.error(
                "run %s: abandoned: the server answered %s to a recorded value: %s",
                run.run_id,
                commands.status_name(result.status),
                result.message,
            )
        run.abandon()


class Entries:
    """The run's custom history entries: ``ctx.record()`` and ``ctx.log()``."""

    __slots__ = ("_acks", "_keys", "_run", "_settler")

    def __init__(self, run: RunControl, keys: Keys, acks: Acks, settler: Settler) -> None:
        self._run = run
        self._keys = keys
        self._acks = acks
        self._settler = settler

    def call(self, name: str, payload_json: str, *, progress: bool = False) -> None:
        """Assign the entry its key now (``entry:N``, or ``progress:N`` for progress)
        and send ``record_event`` without waiting for the answer."""
        key = self._keys.key("progress" if progress else "entry")
        self._settler.touch()
        if not self._run.phase.executing:
            return
        command = commands.record_event(key, name, payload_json, progress=progress)
        answer = self._run.send(command)
        if answer is None:  # the channel is closed: the run is lost to this worker
            return
        self._acks.entries.add(answer)
        answer.add_done_callback(self._answered)

    async def acknowledged(self) -> None:
        """Wait until every entry sent is acknowledged (each failure abandons)."""
        await all_answered(self._acks.entries)
        self._run.check_live()

    def _answered(self, answer: asyncio.Future[commands.Result]) -> None:
        self._acks.entries.discard(answer)
        run = self._run
        if answer.cancelled() or run.phase.gone:
            return
        result = answer.result()
        status = result.status
        if status == commands.INVALID:
            # A refused entry (e.g. over the payload limit) is dropped: a log line must
            # not wedge the run. Every replay sends it again and is refused again.
            logger.error(
                "run %s: custom entry dropped: the server answered INVALID to record_event: %s",
                run.run_id,
                result.message,
            )
            status = commands.OK
        if status in (commands.OK, commands.DUPLICATE):
            self._settler.check()  # the run may have been waiting only for this answer
            return
        if status != commands.LEASE_LOST:
            logger.error(
                "run %s: abandoned: the server answered %s to record_event: %s",
                run.run_id,
                commands.status_name(status),
                result.message,
            )
        run.abandon()
