"""The run lifecycle: the moves that end, re-queue or make ready a run, and who hears of them.

Above the lease ledger. Each move is one guarded store write whose guard is the
state machine's (``transitions.py``); only after it committed does the
lifecycle let the run go in the ledger, tell the worker that held it when the
server ended it, and tell its listeners:

* ``on_ready`` listeners hear of a run queued here for any worker serving it
  (the replica link announces it to the other replicas);
* ``on_end`` listeners hear of a run that ended here (children wake the parent
  and cancel the run's children, the replica link tells the other replicas,
  ``GetRun(wait=true)`` callers are answered).

Helpers subscribe to these instead of being called by, or calling into, the
engine.
"""

from __future__ import annotations

from collections.abc import Callable

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain import DueTimer, ErrorDetails, FailureReason, RunRecord, RunStatus
from stepd.server.engine import transitions
from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.errors import FailedPrecondition, NotFound
from stepd.server.engine.ledger import LeaseLedger
from stepd.server.engine.sessions import Cancellation, WorkerSession
from stepd.server.engine.sticky import StickyRuns
from stepd.server.engine.timers import TimerSchedule
from stepd.server.engine.transitions import RunEvent
from stepd.server.engine.validation import shown
from stepd.server.store.base import Store
from stepd.server.store.run_actions import DeadlineChange, RetryStatus

#: Told of a run after the commit that made it ready, or ended it.
RunListener = Callable[[RunRecord], None]

_RELEASE = transitions.move(RunEvent.RELEASE)
_COMPLETE = transitions.move(RunEvent.COMPLETE)
_FAIL = transitions.move(RunEvent.FAIL)
_CANCEL = transitions.move(RunEvent.CANCEL)
_EXPIRE = transitions.move(RunEvent.EXPIRE)
_RETRY = transitions.move(RunEvent.RETRY)


class RunLifecycle:
    """Ends, re-queues and readies runs, and tells the listeners.

    ``timers`` are the runs' waits and expiry (forgotten when a run ends);
    ``starts`` the delayed starts (a run made ready before its start time waits
    there); ``sticky`` the suspended runs kept live by a worker (a woken one is
    offered there first); ``clock`` says whether a start time has come.
    """

    def __init__(
        self,
        store: Store,
        ledger: LeaseLedger,
        dispatcher: Dispatcher,
        sticky: StickyRuns,
        timers: TimerSchedule,
        starts: TimerSchedule,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ledger = ledger
        self._dispatcher = dispatcher
        self._sticky = sticky
        self._timers = timers
        self._starts = starts
        self._ready_listeners: list[RunListener] = []
        self._end_listeners: list[RunListener] = []
        self._waiting_listeners: list[RunListener] = []
        self._late_gate: Callable[[RunRecord], bool] | None = None

    def on_ready(self, listener: RunListener) -> None:
        """Tell ``listener`` of every run queued here for any worker, after its commit."""
        self._ready_listeners.append(listener)

    def on_end(self, listener: RunListener) -> None:
        """Tell ``listener`` of every run that ended here, after its commit
        (listeners are told in the order they subscribed)."""
        self._end_listeners.append(listener)

    def on_waiting(self, listener: RunListener) -> None:
        """Tell ``listener`` of every run made ready that waits for room under its
        concurrency limit (it is not queued; admitting it makes it ready again)."""
        self._waiting_listeners.append(listener)

    def gate_late_starts(self, gate: Callable[[RunRecord], bool]) -> None:
        """Let ``gate`` take over a run with a start rate limit that is made ready
        (True: it did; the gate makes it ready again when its turn comes)."""
        self._late_gate = gate

    # -- ready -----------------------------------------------------------------

    def make_ready(self, run: RunRecord, *, announce: bool = True) -> None:
        """Hand a PENDING run (just committed as such) to dispatch: to the timers
        when it may not start yet, to the worker that keeps it live when that one
        has room, else to the ready queues, and then to the ``on_ready``
        listeners unless ``announce`` is False. A run waiting for room under its
        concurrency limit is not queued: the ``on_waiting`` listeners hear of it."""
        if not run.admitted:
            for listener in self._waiting_listeners:
                listener(run)
            return
        not_before = run.start_time_not_before
        if not_before is not None and not_before > self._clock.now_ms():
            # Held in memory only when due within the timers' horizon.
            self._starts.schedule(DueTimer(run.run_id, "start", not_before))
            return
        if run.rate_limit is not None and self._late_gate is not None and self._late_gate(run):
            return
        parked = self._sticky.get(run.run_id)
        if parked is not None:
            if parked.session.has_room_for_continuation():
                self._dispatcher.push_to(
                    parked.session,
                    run.workflow_name,
                    run.workflow_version,
                    run.run_id,
                    priority=run.priority,
                    fair_key=run.concurrency_key,
                )
                return
            self._sticky.drop(run.run_id, "its worker has no room; the run continues elsewhere")
        resumed = run.dispatch_count > 0
        self._dispatcher.push(
            run.workflow_name,
            run.workflow_version,
            run.run_id,
            resumed=resumed,
            priority=run.priority,
            fair_key=run.concurrency_key,
        )
        if announce:
            for listener in self._ready_listeners:
                listener(run)

    async def requeue(self, run_id: str, lease_id: int, *, delay: float = 0) -> bool:
        """Take a run back from under ``lease_id`` (its worker is gone or failed it)
        and make it ready again, after ``delay`` seconds when given (it is PENDING
        in the store at once); False when the lease was gone already."""
        run = await self._store.release_run(run_id, _RELEASE, lease_id)
        if run is None:
            return False
        if delay > 0:
            self._dispatcher.push_later(
                delay,
                run.workflow_name,
                run.workflow_version,
                run_id,
                priority=run.priority,
                fair_key=run.concurrency_key,
            )
        else:
            self.make_ready(run)
        return True

    async def hand_out_again(
        self, session: WorkerSession, run_id: str, lease_id: int, reason: str, *, delay: float = 0
    ) -> None:
        """Take a run from the worker that holds it, tell the worker to drop it,
        and make it ready for any worker (after ``delay`` seconds when given)."""
        self._ledger.let_go(session, run_id)
        session.send(Cancellation(run_id, lease_id, reason))
        await self.requeue(run_id, lease_id, delay=delay)

    # -- what the worker that holds a run says ---------------------------------------

    async def release(self, session: WorkerSession, run_id: str, lease_id: int) -> RunRecord | None:
        """The worker gives the run back unchanged; None when its lease was gone."""
        run = await self._store.release_run(run_id, _RELEASE, lease_id)
        if run is not None:
            self.make_ready(run)
            self._ledger.let_go(session, run_id)
        return run

    async def complete(
        self, session: WorkerSession, run_id: str, lease_id: int, result_json: str
    ) -> RunRecord | None:
        """The workflow returned; None when the worker's lease was gone."""
        run = await self._store.complete_run(run_id, _COMPLETE, lease_id, result_json)
        if run is not None:
            self._ledger.let_go(session, run_id)
            self._ended(run)
        return run

    async def fail(
        self, session: WorkerSession, run_id: str, lease_id: int, error: ErrorDetails
    ) -> RunRecord | None:
        """The workflow raised; None when the worker's lease was gone."""
        run = await self._store.fail_run(
            run_id, _FAIL, error, FailureReason.WORKFLOW_ERROR, lease_id=lease_id
        )
        if run is not None:
            self._ledger.let_go(session, run_id)
            self._ended(run)
        return run

    # -- what the server decides -------------------------------------------------

    async def fail_held(
        self,
        session: WorkerSession,
        run_id: str,
        lease_id: int,
        error: ErrorDetails,
        reason: FailureReason,
    ) -> bool:
        """Fail a run that ``session`` holds, for a reason of the server's, and tell
        the worker to stop it. False when the lease was gone already."""
        run = await self._store.fail_run(run_id, _FAIL, error, reason, lease_id=lease_id)
        if run is None:
            return False
        self._ledger.let_go(session, run_id)
        session.send(Cancellation(run_id, lease_id, f"run failed: {error.message}"))
        self._timers.forget_run(run_id)
        await self._store.abandon_waits(run_id)
        self._ended(run)
        return True

    async def cancel(self, run_id: str, reason: str, *, actor: str = "") -> tuple[RunRecord, bool]:
        """Cancel an unfinished run wherever it stands; return it and whether it was
        cancelled already. FailedPrecondition when it ended otherwise. ``actor``
        (the caller's API key id) goes into the run's history."""
        for _ in range(10):
            run = await self._store.cancel_run(run_id, _CANCEL, reason, actor=actor)
            if run is not None:
                self._ledger.take_back(run_id, reason)
                self._ended(run)
                self._timers.forget_run(run_id)
                self._starts.forget_run(run_id)
                await self._store.abandon_waits(run_id)
                return run, False
            current = await self._store.get_run(run_id)
            if current is None:
                raise NotFound(f"run {shown(run_id)} not found")
            if current.status is RunStatus.CANCELLED:
                return current, True
            if current.status.is_terminal:
                raise FailedPrecondition(
                    f"run {shown(run_id)} is already {current.status.value}; "
                    "only unfinished runs can be cancelled"
                )
            # The run moved between two of its statuses meanwhile: try again.
        raise FailedPrecondition(f"run {shown(run_id)} kept changing; try cancelling again")

    async def expire(
        self, run_id: str, error: ErrorDetails, reason: FailureReason, what: str
    ) -> RunRecord | None:
        """Fail a run wherever it stands (its deadline or execution timeout passed,
        ``what`` says which) and tell the worker holding it, if any; None when it
        was not in a status it can expire from."""
        run = await self._store.fail_run(run_id, _EXPIRE, error, reason)
        if run is None:
            return None
        self._ledger.take_back(run_id, what)
        self._ended(run)
        self._timers.forget_run(run_id)
        await self._store.abandon_waits(run_id)
        return run

    async def retry(
        self, run_id: str, deadline: DeadlineChange, *, reason: str = "", actor: str = ""
    ) -> RunRecord:
        """Resume a failed or cancelled run where it stopped (its journal kept, the
        step that failed it run again) and make it ready. NotFound for an unknown
        run; FailedPrecondition when it is not failed or cancelled, or when the
        deadline it would keep has passed."""
        outcome = await self._store.retry_run(run_id, _RETRY, deadline, reason=reason, actor=actor)
        if outcome.status is RetryStatus.NOT_FOUND:
            raise NotFound(f"run {shown(run_id)} not found")
        if outcome.status is RetryStatus.DEADLINE_PASSED:
            raise FailedPrecondition(
                f"the deadline of run {shown(run_id)} has passed; "
                "retry it with a new deadline, or clear its deadline"
            )
        if outcome.status is RetryStatus.WRONG_STATUS or outcome.run is None:
            status = outcome.run.status.value if outcome.run is not None else "changing"
            raise FailedPrecondition(
                f"run {shown(run_id)} is {status}; only failed and cancelled runs can be retried"
            )
        self.make_ready(outcome.run)
        return outcome.run

    def _ended(self, run: RunRecord) -> None:
        self._sticky.drop(run.run_id, f"run {run.status.value}")
        for listener in self._end_listeners:
            listener(run)
