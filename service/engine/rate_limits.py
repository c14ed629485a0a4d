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
whose next turn is in the past.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the sweep of keys that hold nothing back any more."""
        self._task = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the sweep."""
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
