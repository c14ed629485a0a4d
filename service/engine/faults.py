"""Runs the server failed to move: back off, and after a few faults, fail the run.

When a worker's command or a claim fails inside the server (not because of
what the worker sent: that is an INVALID result), the run is handed out
again, but only after a delay that doubles with each fault of the run
(``FIRST_DELAY`` up to ``MAX_DELAY``), so a command the server cannot store
never loops. After ``FAULT_LIMIT`` such faults the run fails with
``FailureReason.SERVER_ERROR`` and the last fault as its error. Storage that
cannot be used now (``StoreUnavailableError``: the database is unreachable,
locked or full) delays the run the same way but does not count toward the
limit: an outage is not the run's fault, and the run goes on once storage is
back. Counts live in memory and are forgotten when the run ends.
"""

from __future__ import annotations

import logging

from stepd.server.domain import ErrorDetails, FailureReason
from stepd.server.engine.dispatcher import Dispatcher, QueueKey
from stepd.server.engine.lifecycle import RunLifecycle
from stepd.server.engine.sessions import WorkerSession
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.engine")

#: Faults of one run (storage outages not counted) after which it fails.
FAULT_LIMIT = 5
#: The delay after a run's first fault (seconds); it doubles with each one.
FIRST_DELAY = 0.25
#: The longest delay (seconds).
MAX_DELAY = 30.0
#: The error type of a run failed for SERVER_ERROR.
SERVER_ERROR_TYPE = "stepd.ServerError"


class RunFaults:
    """Counts each run's faults and says how long it waits before going out again."""

    def __init__(
        self,
        limit: int = FAULT_LIMIT,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self._limit = limit
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._counted: dict[str, int] = {}
        self._outages: dict[str, int] = {}

    @property
    def limit(self) -> int:
        """Faults after which a run fails."""
        return self._limit

    @property
    def max_delay(self) -> float:
        """The longest delay (seconds)."""
        return self._max_delay

    def record(self, run_id: str, exc: BaseException) -> float | None:
        """Note a fault of ``run_id``; return how long it waits before it is handed
        out again, or None when it reached the limit and must fail."""
        if isinstance(exc, StoreUnavailableError):
            self._outages[run_id] = self._outages.get(run_id, 0) + 1
        else:
            counted = self._counted[run_id] = self._counted.get(run_id, 0) + 1
            if counted >= self._limit:
                return None
        faults = self._counted.get(run_id, 0) + self._outages.get(run_id, 0)
        delay: float = self._first_delay * 2 ** min(faults - 1, 30)
        return min(delay, self._max_delay)

    def forget(self, run_id: str) -> None:
        """The run ended: drop its counts."""
        self._counted.pop(run_id, None)
        self._outages.pop(run_id, None)


def describe(exc: BaseException) -> str:
    """A fault in one short line, for a run's error and the log."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class FaultPolicy:
    """Puts back runs whose claim or command failed inside the server, with a
    growing delay, and fails those that keep failing (``RunFaults``)."""

    def __init__(self, lifecycle: RunLifecycle, dispatcher: Dispatcher, faults: RunFaults) -> None:
        self._lifecycle = lifecycle
        self._dispatcher = dispatcher
        self._faults = faults

    def forget(self, run_id: str) -> None:
        """The run ended (an ``on_end`` listener)."""
        self._faults.forget(run_id)

    def _log(self, what: str, run_id: str, exc: BaseException, delay: float | None) -> None:
        then = "it fails" if delay is None else f"it goes out again in {delay:g} s"
        if isinstance(exc, StoreUnavailableError):
            log.warning("%s run %s failed: storage unavailable (%s); %s", what, run_id, exc, then)
        else:
            log.error("%s run %s failed; %s", what, run_id, then, exc_info=exc)

    async def _fail(self, run_id: str, what: str, exc: BaseException) -> bool:
        """Fail the run for SERVER_ERROR; False when that failed too."""
        error = ErrorDetails(
            SERVER_ERROR_TYPE,
            f"the server failed {self._faults.limit} times to {what} the run; "
            f"the last fault: {describe(exc)}",
        )
        try:
            ended = await self._lifecycle.expire(
                run_id, error, FailureReason.SERVER_ERROR, "a server error"
            )
        except StoreUnavailableError as exc:
            log.warning("failing run %s for a server error: storage unavailable (%s)", run_id, exc)
            return False
        except Exception:
            log.exception("failing run %s for a server error failed", run_id)
            return False
        return ended is not None

    async def claim_failed(self, run_id: str, queue: QueueKey, exc: BaseException) -> None:
        """A claim of a ready run failed: put it back in ``queue`` after its delay."""
        delay = self._faults.record(run_id, exc)
        self._log("claiming", run_id, exc, delay)
        if delay is None:
            if await self._fail(run_id, "hand out", exc):
                return
            delay = self._faults.max_delay
        self._dispatcher.push_later(delay, queue[0], queue[1], run_id)

    async def command_failed(
        self, session: WorkerSession, run_id: str, lease_id: int, exc: BaseException
    ) -> None:
        """A command of a run ``session`` holds failed in the server: the worker
        drops the run, which goes out again after its delay (or fails)."""
        delay = self._faults.record(run_id, exc)
        self._log("a command of", run_id, exc, delay)
        if delay is None:
            if await self._fail(run_id, "record a command of", exc):
                return
            delay = self._faults.max_delay
        try:
            await self._lifecycle.hand_out_again(
                session, run_id, lease_id, "a command of the run failed in the server", delay=delay
            )
        except Exception as again:
            log.warning(
                "re-queueing run %s failed (%s); its lease will expire", run_id, describe(again)
            )
