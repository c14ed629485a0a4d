"""Rate limits on run starts and on steps: checking them, taking turns, and
saying why a run waits.

A turn is taken in the store (``stepd.server.store.rate_limits``), so one
limit holds across workers and PostgreSQL replicas. A workflow's start rate
limit takes each new run's turn in the transaction that creates the run; a
turn in the future is the run's start time (a delayed start). A step with a
rate limit asks for its turn (``acquire_rate``) before each attempt, and its
worker waits until the turn begins; the answer carries the delay, not a time,
so the worker's clock does not matter. Turns of one key are spread evenly
(``stepd.server.store.rate_limits``). A sweep every minute deletes the keys
whose next turn is in the past. A run released long after its start turn
(after a restart, say) takes a new turn first (``late_start``), and so does
one that waited for a free worker longer than that (``may_start``, asked by
the claim): run starts never come in a burst after a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain import RunRecord, RunStatus
from stepd.server.domain_flow import MAX_RATE_LIMIT, MAX_RATE_PERIOD_MS, RateSpec
from stepd.server.engine.commands import AcquireRate, CommandResult, CommandStatus
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.validation import check_name
from stepd.server.store.base import Store

log = logging.getLogger("stepd.engine.rate_limits")

#: Longest key path a start rate limit may declare.
MAX_KEY_PATH_LENGTH = 256
#: How often keys whose next turn is in the past are deleted, in seconds.
SWEEP_SECONDS = 60.0
#: A run released this long after its start turn takes a new turn.
LATE_START_MS = 50


def check_rate(limit: int, period_ms: int, where: str) -> None:
    """InvalidArgument naming ``where`` unless 1 <= limit <= MAX_RATE_LIMIT and
    1 ms <= period <= MAX_RATE_PERIOD_MS."""
    if not 1 <= limit <= MAX_RATE_LIMIT:
        raise InvalidArgument(f"{where}.limit must be from 1 to {MAX_RATE_LIMIT}, got {limit}")
    if not 1 <= period_ms <= MAX_RATE_PERIOD_MS:
        raise InvalidArgument(f"{where}.period must be from 1 ms to 7 days")


def check_start_rate(spec: RateSpec, where: str) -> RateSpec:
    """A workflow's start rate limit, checked (InvalidArgument naming ``where``)."""
    check_rate(spec.limit, spec.period_ms, where)
    check_name(f"{where}.name", spec.name, required=True)
    check_name(f"{where}.key_path", spec.key_path, max_length=MAX_KEY_PATH_LENGTH)
    return spec


def _shown_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class RateLimits:
    """Hands out turns under rate limits to step attempts."""

    def __init__(
        self,
        store: Store,
        make_ready: Callable[[RunRecord], None],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._make_ready = make_ready
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._retaking: dict[str, asyncio.Task[None]] = {}
        # Runs being made ready right after taking a new turn: the turn stands,
        # even when the event loop was slow enough for it to look late already.
        self._turn_retaken: set[str] = set()
        # Runs with a start rate limit released to the ready queues: when (ms).
        self.released: dict[str, int] = {}

    def late_start(self, run: RunRecord) -> bool:
        """A run with a start rate limit is about to be released: when its turn
        passed more than LATE_START_MS ago and it never started (the server was
        down, say), take it over: it takes a new turn, then is made ready again
        (True). So a backlog is released at the limit's pace, not at once."""
        not_before = run.start_time_not_before
        if not_before is None:  # its turn was its creation
            not_before = run.create_time
        if run.dispatch_count:
            return False
        now = self._clock.now_ms()
        if now - not_before <= LATE_START_MS or run.run_id in self._turn_retaken:
            self.released[run.run_id] = now
            return False
        if run.run_id not in self._retaking:
            task = asyncio.create_task(self._retake(run.run_id))
            self._retaking[run.run_id] = task
            task.add_done_callback(lambda _: self._retaking.pop(run.run_id, None))
        return True

    async def may_start(self, run_id: str) -> bool:
        """Whether a worker may take a run now (its claim asks first, when runs
        with a start rate limit were released): False when the run was released
        more than LATE_START_MS ago (it waited for a free worker) and the limit
        has no turn for it now; it then waits for the new turn it took, so runs
        never start in a burst after a backlog."""
        released = self.released.pop(run_id, None)
        now = self._clock.now_ms()
        if released is None or now - released <= LATE_START_MS:
            return True
        run = await self._store.retake_start_turn(run_id, now)
        if run is None or (run.start_time_not_before or 0) <= now:
            return True
        self._make_ready(run)  # to the delayed starts, until its new turn
        return False

    def forget(self, run: RunRecord) -> None:
        """A run ended: drop what is known of its release."""
        self.released.pop(run.run_id, None)

    async def _retake(self, run_id: str) -> None:
        for attempt in range(5):
            try:
                run = await self._store.retake_start_turn(run_id, self._clock.now_ms())
            except Exception as exc:  # the run stays pending: try again shortly
                log.warning("run %s: taking a new start turn failed: %s", run_id, exc)
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if run is not None:
                log.info(
                    "run %s was released late: its new start turn is in %d ms",
                    run_id,
                    (run.start_time_not_before or 0) - self._clock.now_ms(),
                )
                self._turn_retaken.add(run_id)
                try:
                    self._make_ready(run)
                finally:
                    self._turn_retaken.discard(run_id)
            return

    def start(self) -> None:
        """Start the sweep of keys that hold nothing back any more."""
        self._task = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweep and the turns being retaken."""
        for task in list(self._retaking.values()):
            task.cancel()
        await asyncio.gather(*self._retaking.values(), return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self._store.forget_rate_turns(self._clock.now_ms())
            except Exception as exc:  # the next sweep tries again
                log.warning("forgetting past rate-limit turns failed: %s", exc)

    async def acquire(self, cid: int, run_id: str, action: AcquireRate) -> CommandResult:
        """Apply ``acquire_rate``: take the step's turn; answer with the delay
        until it begins."""
        check_rate(action.limit, action.period_ms, "acquire_rate")
        now = self._clock.now_ms()
        turn = await self._store.reserve_rate(
            action.name, action.key, action.limit, action.period_ms, now
        )
        return CommandResult(cid, CommandStatus.OK, start_after_ms=max(turn - now, 0))

    def waiting_reason(self, run: RunRecord) -> str:
        """Why a pending run waits for its turn under its start rate limit ("" when
        it does not)."""
        not_before = run.start_time_not_before
        if (
            run.rate_limit is None
            or run.status is not RunStatus.PENDING
            or not_before is None
            or not_before <= self._clock.now_ms()
        ):
            return ""
        return (
            f"rate-limited by limit {run.rate_limit!r} key {run.rate_key!r} "
            f"until {_shown_time(not_before)}"
        )
