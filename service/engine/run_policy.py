"""The failure policy's server side: step timeouts, the journal limit, run expiry.

A worker announces a step attempt that has a timeout (``start_step``); when it
does not report the attempt within the timeout and a grace, the server records
the attempt as timed out and hands the run out again (``end_overdue_attempt``).
A run whose journal reaches its limit fails instead of growing
(``journal_full``). A run's deadline or execution timeout is a timer on the
run (``RUN_EXPIRY_KEY``); when it fires the run fails wherever it stands, and
the worker holding it is told (``expire``).
"""

from __future__ import annotations

import logging

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain import (
    RUN_EXPIRY_KEY,
    DueTimer,
    ErrorDetails,
    FailureReason,
    RecordStepStatus,
    RunRecord,
    StepRow,
    run_fields,
)
from stepd.server.engine.commands import CommandResult, CommandStatus, StartStep
from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.ledger import LeaseLedger
from stepd.server.engine.lifecycle import RunLifecycle
from stepd.server.engine.run_limits import OpenAttempt, RunLimits
from stepd.server.engine.sessions import WorkerSession
from stepd.server.engine.timers import TimerSchedule
from stepd.server.store.base import Store

log = logging.getLogger("stepd.engine")

#: The error types of runs and attempts the server ends on its own.
STEP_TIMEOUT_ERROR = "stepd.StepTimeoutError"
DEADLINE_ERROR = "stepd.DeadlineExceeded"
EXECUTION_TIMEOUT_ERROR = "stepd.ExecutionTimeout"
MAX_ENTRIES_ERROR = "stepd.MaxEntriesExceeded"
JOURNAL_TOO_LARGE_ERROR = "stepd.JournalTooLarge"


class RunPolicy:
    """Ends attempts, runs and journals that went past their limits.

    ``limits`` tracks the open attempts and journal sizes of held runs; ``timers``
    carry each run's expiry; the ``ledger`` says who holds a run and the
    ``lifecycle`` ends or re-queues it.
    """

    def __init__(
        self,
        store: Store,
        limits: RunLimits,
        timers: TimerSchedule,
        ledger: LeaseLedger,
        lifecycle: RunLifecycle,
        dispatcher: Dispatcher,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._timers = timers
        self._ledger = ledger
        self._lifecycle = lifecycle
        self._dispatcher = dispatcher

    def start_step(self, cid: int, run_id: str, lease_id: int, action: StartStep) -> CommandResult:
        """Apply ``start_step``: the server now times the attempt."""
        if not action.step_key:
            raise InvalidArgument("start_step.step_key is required")
        if action.timeout_ms <= 0:
            raise InvalidArgument("start_step.timeout must be longer than 0")
        self._limits.attempt_started(
            OpenAttempt(
                run_id,
                lease_id,
                action.step_key,
                action.attempt,
                action.timeout_ms,
                self._clock.now_ms(),
            )
        )
        return CommandResult(cid, CommandStatus.OK)

    async def end_overdue_attempt(self, attempt: OpenAttempt) -> None:
        """The worker did not report a step attempt within its timeout (and grace):
        record it as timed out, take the run back and hand it out again; the
        step's retry policy decides what follows."""
        run_id, lease_id = attempt.run_id, attempt.lease_id
        self._limits.attempt_ended(run_id, attempt.step_key)
        session = self._ledger.holder(run_id)
        if session is None or not self._ledger.holds(session, run_id, lease_id):
            return
        message = (
            f"step {attempt.step_key} attempt {attempt.attempt} did not finish within its "
            f"timeout of {attempt.timeout_ms / 1000:g} s; the worker did not report it, so "
            "the server ended it"
        )
        step = StepRow(
            step_key=attempt.step_key,
            attempt=attempt.attempt,
            error=ErrorDetails(
                STEP_TIMEOUT_ERROR, message, step_key=attempt.step_key, attempt=attempt.attempt
            ),
            start_time=attempt.started_at,
            end_time=self._clock.now_ms(),
            attempt_only=True,
        )
        outcome = await self._store.record_step(run_id, lease_id, step)
        if outcome.status is RecordStepStatus.LEASE_LOST:
            return
        log.warning(
            "run %s: %s; handing the run out again",
            run_id,
            message,
            extra=run_fields(run_id, lease=lease_id),
        )
        session.mark_suspect()  # its event loop may be blocked: no new runs until it speaks
        self._dispatcher.unstick(session)
        await self._lifecycle.hand_out_again(session, run_id, lease_id, message)

    async def journal_full(
        self, session: WorkerSession, cid: int, run_id: str, lease_id: int, step_key: str
    ) -> CommandResult:
        """The run's journal is at its limit: fail the run instead of growing it."""
        limit = self._limits.limit(run_id)
        error = ErrorDetails(
            MAX_ENTRIES_ERROR,
            f"run {run_id} reached its limit of {limit} journal entries (steps, failed "
            "attempts, met waits); raise the workflow's max_entries or split the work "
            "into child runs",
            step_key=step_key,
        )
        await self._lifecycle.fail_held(
            session, run_id, lease_id, error, FailureReason.MAX_ENTRIES_EXCEEDED
        )
        log.warning(
            "run %s failed: %s", run_id, error.message, extra=run_fields(run_id, lease=lease_id)
        )
        return self._ledger.lease_lost(cid, run_id, session)

    async def journal_too_large(
        self, session: WorkerSession, cid: int, run_id: str, lease_id: int, step_key: str
    ) -> CommandResult:
        """The step would take the run's journal past its byte budget: fail the run."""
        limit = self._limits.max_bytes
        error = ErrorDetails(
            JOURNAL_TOO_LARGE_ERROR,
            f"step {step_key!r} would take the journal of run {run_id} past its budget of "
            f"{limit} bytes of step results and met waits' payloads (stepd serve "
            "--max-journal-bytes); keep large data outside the run and pass references, "
            "or split the work into child runs",
            step_key=step_key,
        )
        await self._lifecycle.fail_held(
            session, run_id, lease_id, error, FailureReason.JOURNAL_TOO_LARGE
        )
        log.warning("run %s failed: its journal would pass %d bytes", run_id, limit)
        return self._ledger.lease_lost(cid, run_id, session)

    def schedule_expiry(self, run: RunRecord) -> None:
        """Arm the timer that ends ``run`` at its deadline or execution timeout."""
        if run.expire_time is not None and not run.status.is_terminal:
            self._timers.schedule(DueTimer(run.run_id, RUN_EXPIRY_KEY, run.expire_time))

    async def expire(self, run_id: str) -> None:
        """Fail a run whose deadline or execution timeout passed, wherever it stands,
        and tell the worker holding it (if any) to stop."""
        for _ in range(10):
            run = await self._store.get_run(run_id)
            if run is None or run.status.is_terminal or run.expire_time is None:
                return
            now = self._clock.now_ms()
            if run.expire_time > now:  # e.g. rescheduled by a refill ahead of time
                self.schedule_expiry(run)
                return
            if run.deadline is not None and run.deadline <= now:
                reason, error_type = FailureReason.DEADLINE_EXCEEDED, DEADLINE_ERROR
                what = "its deadline passed"
            else:
                reason, error_type = FailureReason.EXECUTION_TIMEOUT, EXECUTION_TIMEOUT_ERROR
                what = "its workflow's execution timeout passed"
            message = f"run {run_id} failed: {what}"
            error = ErrorDetails(error_type, message)
            if await self._lifecycle.expire(run_id, error, reason, what) is not None:
                log.info("%s", message)
                return
            # The run moved between two of its statuses meanwhile: look again.
