"""The engine: owns run state changes, worker sessions, and waiting on runs.

Handlers call the engine; the engine calls the store. Every status change
goes through the transition table (``transitions.py``) as a conditional store
write, and every answer to a caller or worker is sent only after its write
committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from stepd.server.config import ServerConfig
from stepd.server.domain import (
    RUN_EXPIRY_KEY,
    DueTimer,
    ErrorDetails,
    FailureReason,
    HistoryCursor,
    HistoryEntry,
    HookStatus,
    NewRun,
    RecordStepStatus,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalStatus,
    SuspendStatus,
    WaitSpec,
    WorkflowLimits,
    now_ms,
)
from stepd.server.domain_schedules import WorkflowDeclaration
from stepd.server.engine import hook_tokens, transitions
from stepd.server.engine.children import ChildRuns
from stepd.server.engine.commands import (
    Command,
    CommandResult,
    CommandStatus,
    CompleteRun,
    FailRun,
    HoldRun,
    Malformed,
    RecordEvent,
    RecordStep,
    ReleaseRun,
    StartChild,
    StartStep,
    SuspendRun,
)
from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.errors import (
    AlreadyExists,
    EngineError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from stepd.server.engine.payloads import check_json_payload
from stepd.server.engine.registry import WorkflowRegistry
from stepd.server.engine.replicas import REPLICA_TIMER_HORIZON_MS, ReplicaLink
from stepd.server.engine.run_limits import RunLimits
from stepd.server.engine.run_policy import RunPolicy
from stepd.server.engine.schedules import Scheduler
from stepd.server.engine.sessions import Cancellation, WorkerSession
from stepd.server.engine.sticky import StickyRuns
from stepd.server.engine.timers import TimerSchedule
from stepd.server.engine.transitions import RunEvent
from stepd.server.engine.validation import (
    MAX_ID_LENGTH,
    MAX_PAGE_BYTES,
    check_id,
    check_waits,
    shown,
)
from stepd.server.store.base import RunConflictError, Store
from stepd.server.store.notify import channel_for
from stepd.server.store.schedules import RESERVED_KEY_PREFIX

log = logging.getLogger("stepd.engine")

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
#: Most runs with an expired lease re-queued by one sweep.
EXPIRY_SWEEP_LIMIT = 500


@dataclass(frozen=True, slots=True)
class TriggerParams:
    """A Trigger request, decoded."""

    workflow_name: str
    workflow_version: str
    input_json: str
    input_encoding: str = ""
    run_id: str = ""
    idempotency_key: str = ""
    deadline: int | None = None
    start_time_not_before: int | None = None


class Engine:
    """Runs' life cycle on one server process over one store."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.registry = WorkflowRegistry()
        self.dispatcher = Dispatcher(self._claim_for)
        self.sticky = StickyRuns()  # suspended runs kept live by their worker
        self._holders: dict[str, WorkerSession] = {}
        self._run_waiters: dict[str, list[asyncio.Future[RunRecord]]] = {}
        self._lease_monitor: asyncio.Task[None] | None = None
        self.replicas = ReplicaLink(
            self, channel_for(config.database), config.replica_poll_ms / 1000
        )
        # Replicas load timers a shorter way ahead: those a dead replica held fire soon.
        horizon = REPLICA_TIMER_HORIZON_MS if self.replicas.replicated else 60_000
        self.timers = TimerSchedule(store, self._fire_timer, horizon)
        self.run_limits = RunLimits(config.max_journal_entries)
        # Delayed starts: pending runs whose start time is still ahead.
        self.starts = TimerSchedule(
            store,
            self._start_due,
            horizon,
            load=lambda until, n: store.delayed_starts(now_ms(), until, n),
        )
        self.schedules = Scheduler(
            store, config, self.registry, self._make_ready, self.cancel_run, horizon
        )
        self._closing = False
        self._hook_key = b""
        self.children = ChildRuns(self)
        self.policy = RunPolicy(self)

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Load the registry and recover unfinished runs.

        One server on SQLite re-queues every unfinished run at once: no other
        process can hold one. A replica on PostgreSQL cannot tell a run held by
        a live replica from one held by a dead one, so it re-queues only runs
        whose stored lease expired (the lease sweep) and finds pending runs by
        polling (``replicas.py``).
        """
        self.registry.load(await self.store.workflow_versions())
        self._hook_key = await self.store.server_secret("hook_key")
        if not self.replicas.replicated:
            await self._recover_all()
        await self.children.recover()
        await self.replicas.start()
        self._lease_monitor = asyncio.create_task(self._watch_leases())
        self.timers.start()
        self.starts.start()
        self.schedules.start()

    async def _recover_all(self) -> None:
        recovered = 0
        for run in await self.store.runs_in_status([RunStatus.RUNNING]):
            # No worker holds a run across a restart of this server.
            released = await self.store.transition_run(
                run.run_id,
                transitions.sources(RunEvent.RELEASE),
                transitions.target(RunEvent.RELEASE),
                lease_id=run.lease_id,
                values={"lease_owner": None},
            )
            if released is not None:
                self._make_ready(released)
                recovered += 1
        for run in await self.store.runs_in_status([RunStatus.PENDING]):
            self._make_ready(run)
            recovered += 1
        if recovered:
            log.info("recovered %d unfinished runs", recovered)

    async def close(self) -> None:
        """Stop timers, end worker sessions and settle claims in flight."""
        self._closing = True
        await self.replicas.close()
        if self._lease_monitor is not None:
            self._lease_monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_monitor
        await self.timers.close()
        await self.starts.close()
        await self.schedules.close()
        await self.children.close()
        for session in self.dispatcher.sessions:
            session.close(Unavailable("the server is shutting down; reconnect"))
        await self.dispatcher.close()
        for waiters in self._run_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()

    # -- client API ------------------------------------------------------------

    async def trigger(self, params: TriggerParams) -> tuple[RunRecord, bool]:
        """Create a run (or find the idempotency key's run); return it and
        whether it already existed."""
        name = params.workflow_name.strip()
        if not name:
            raise InvalidArgument("workflow_name is required")
        if len(name) > MAX_ID_LENGTH:
            raise InvalidArgument(f"workflow_name is longer than {MAX_ID_LENGTH} characters")
        if params.run_id:
            check_id("run_id", params.run_id)
        if len(params.idempotency_key) > MAX_ID_LENGTH:
            raise InvalidArgument(f"idempotency_key is longer than {MAX_ID_LENGTH} characters")
        if params.idempotency_key.startswith(RESERVED_KEY_PREFIX):
            raise InvalidArgument(
                f"idempotency_key must not start with {RESERVED_KEY_PREFIX!r} "
                "(reserved for runs started by events and schedules)"
            )
        input_json = check_json_payload(
            "input", params.input_json, params.input_encoding, self.config.max_payload_bytes
        )
        version = params.workflow_version or self.registry.newest(name) or ""
        run_id = params.run_id or uuid.uuid4().hex
        now = now_ms()
        new = NewRun(
            run_id=run_id,
            workflow_name=name,
            workflow_version=version,
            input_json=input_json,
            create_time=now,
            idempotency_key=params.idempotency_key or None,
            root_run_id=run_id,
            deadline=params.deadline,
            start_time_not_before=params.start_time_not_before,
        )
        try:
            outcome = await self.store.create_run(new)
        except RunConflictError:
            raise AlreadyExists(
                f"run_id {shown(run_id)} already exists; pick another id, or send the "
                "idempotency key that created it to get that run back"
            ) from None
        if outcome.created:
            self._make_ready(outcome.run)
            self.policy.schedule_expiry(outcome.run)
        return outcome.run, not outcome.created

    async def get_run(
        self, run_id: str, *, wait: bool = False, wait_seconds: float | None = None
    ) -> RunRecord:
        """Return a run; with ``wait``, first wait up to ``wait_seconds`` (None: the
        cap, config.max_wait_seconds; 0: not at all) for it to reach a terminal status."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        if not wait:
            return await self._existing(run_id)
        waiter: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        waiters = self._run_waiters.setdefault(run_id, [])
        waiters.append(waiter)
        try:
            run = await self._existing(run_id)
            if run.status.is_terminal:
                return run
            limit = self.config.max_wait_seconds
            timeout = limit if wait_seconds is None else min(wait_seconds, limit)
            if timeout <= 0:
                return run
            try:
                return await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return await self._existing(run_id)
        finally:
            waiters.remove(waiter)
            if not waiters:
                self._run_waiters.pop(run_id, None)

    async def list_runs(
        self,
        run_filter: RunFilter,
        page_size: int,
        before_seq: int | None,
        *,
        payloads: bool = False,
    ) -> tuple[list[RunRecord], int | None]:
        """Return one page of runs, newest first, and the cursor of the next page.
        Payloads are left out unless asked for; a page holds at most about
        MAX_PAGE_BYTES of them (and at least one run)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        runs, more = await self.store.list_runs_page(
            run_filter, size, before_seq, payloads=payloads, max_bytes=MAX_PAGE_BYTES
        )
        return runs, (runs[-1].seq if more and runs else None)

    async def cancel_run(self, run_id: str, reason: str) -> tuple[RunRecord, bool]:
        """Cancel an unfinished run; return it and whether it was already cancelled."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        for _ in range(10):
            run = await self.store.transition_run(
                run_id,
                transitions.sources(RunEvent.CANCEL),
                transitions.target(RunEvent.CANCEL),
                values={"cancel_reason": reason or "cancelled", "lease_owner": None},
            )
            if run is not None:
                self._after_cancel(run, reason or "cancelled")
                self.timers.forget_run(run_id)
                self.starts.forget_run(run_id)
                await self.store.abandon_waits(run_id)
                return run, False
            current = await self._existing(run_id)
            if current.status is RunStatus.CANCELLED:
                return current, True
            if current.status.is_terminal:
                raise FailedPrecondition(
                    f"run {shown(run_id)} is already {current.status.value}; "
                    "only unfinished runs can be cancelled"
                )
            # The run moved between two of its statuses meanwhile: try again.
        raise FailedPrecondition(f"run {shown(run_id)} kept changing; try cancelling again")

    async def signal(
        self, run_id: str, name: str, payload_json: str, encoding: str, request_id: str
    ) -> None:
        """Store a signal for a run (waking it when it waits for that name)."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        if not name:
            raise InvalidArgument("name is required")
        if len(name) > MAX_ID_LENGTH or len(request_id) > MAX_ID_LENGTH:
            raise InvalidArgument(f"name and request_id are at most {MAX_ID_LENGTH} characters")
        payload = check_json_payload(
            "payload", payload_json, encoding, self.config.max_payload_bytes
        )
        outcome = await self.store.send_signal(run_id, name, payload, request_id or None)
        if outcome.status is SignalStatus.UNKNOWN_RUN:
            raise NotFound(f"run {shown(run_id)} not found")
        if outcome.status is SignalStatus.FINISHED_RUN:
            status = outcome.run_status.value if outcome.run_status else "finished"
            raise FailedPrecondition(
                f"run {shown(run_id)} is already {status}; signals go to unfinished runs"
            )
        if outcome.woken is not None:
            self._make_ready(outcome.woken)

    async def execute_hook(self, token: str, payload_json: str, encoding: str) -> str:
        """Execute the hook a token names; return its run's id."""
        if not token:
            raise InvalidArgument("token is required")
        ref = hook_tokens.verify(self._hook_key, token)
        if ref is None:
            raise NotFound("no hook has this token; check that it was copied whole")
        payload = check_json_payload(
            "payload", payload_json, encoding, self.config.max_payload_bytes
        )
        outcome = await self.store.execute_hook(
            ref.run_id, ref.wait_key, hook_tokens.token_hash(token), payload
        )
        if outcome.status is HookStatus.UNKNOWN_RUN:
            raise NotFound("no hook has this token; its run no longer exists")
        if outcome.status is HookStatus.ALREADY_EXECUTED:
            raise FailedPrecondition("this hook was already executed; a hook executes once")
        if outcome.status is HookStatus.EXPIRED:
            raise FailedPrecondition(
                "this hook expired: its run finished or stopped waiting for it"
            )
        if outcome.woken is not None:
            self._make_ready(outcome.woken)
        return ref.run_id

    async def publish_event(
        self, name: str, payload_json: str, encoding: str, event_id: str
    ) -> tuple[str, bool, list[str], list[str]]:
        """Publish an event; return its id, whether the id was seen before, the runs
        it woke and the runs it started (workflows it triggers)."""
        if not name:
            raise InvalidArgument("name is required")
        if len(name) > MAX_ID_LENGTH:
            raise InvalidArgument(f"name is longer than {MAX_ID_LENGTH} characters")
        if event_id:
            check_id("event_id", event_id)
        payload = check_json_payload(
            "payload", payload_json, encoding, self.config.max_payload_bytes
        )
        event_id = event_id or uuid.uuid4().hex
        outcome = await self.store.publish_event(event_id, name, payload)
        for run in (*outcome.woken, *outcome.started):
            self._make_ready(run)
        return (
            event_id,
            outcome.already_published,
            [r.run_id for r in outcome.woken],
            [r.run_id for r in outcome.started],
        )

    async def run_history(
        self, run_id: str, page_size: int, cursor: HistoryCursor
    ) -> tuple[list[tuple[int, HistoryEntry]], HistoryCursor | None]:
        """One page of a run's history as (position, entry), and the cursor of
        the next page (None on the last); a page holds at most about
        MAX_PAGE_BYTES of payloads (and at least one entry)."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self.store.run_history_page(run_id, cursor, size, MAX_PAGE_BYTES)
        if page is None:
            raise NotFound(f"run {shown(run_id)} not found")
        entries = list(enumerate(page.entries, start=cursor.position + 1))
        return entries, (page.cursor if page.more else None)

    # -- worker API --------------------------------------------------------------

    async def connect_worker(
        self,
        worker_id: str,
        identity: str,
        serves: Iterable[tuple[str, str]],
        capacity: int,
        declarations: Sequence[WorkflowDeclaration] = (),
        *,
        limits: Mapping[tuple[str, str], WorkflowLimits] | None = None,
        max_cached_runs: int = 0,
    ) -> WorkerSession:
        """Register a worker's stream and start handing it runs; store what its
        workflows declare (event triggers, schedules)."""
        if self._closing:
            raise Unavailable("the server is shutting down; reconnect to another or retry")
        pairs = frozenset(serves)
        if not worker_id:
            raise InvalidArgument("hello.worker_id is required")
        if capacity <= 0:
            raise InvalidArgument("hello.capacity must be at least 1")
        if not pairs:
            raise InvalidArgument("hello.workflows must name at least one workflow")
        for name, version in pairs:
            if not name or not version:
                raise InvalidArgument("hello.workflows entries need a name and a version")
        self.schedules.check(declarations)
        new_pairs = [p for p in pairs if not self.registry.knows(*p)]
        if new_pairs:
            await self.store.register_workflows(new_pairs)
            self.registry.add(new_pairs, now_ms())
        await self.schedules.declare(declarations)
        session = WorkerSession(
            worker_id, identity or worker_id, pairs, capacity, limits, max_cached_runs
        )
        self.dispatcher.add_session(session)
        self.replicas.poll_soon()  # runs made ready elsewhere before it came
        log.info("worker %s connected (capacity %d)", session.identity, capacity)
        return session

    async def disconnect_worker(self, session: WorkerSession) -> None:
        """Forget a worker's stream and re-queue every run it held (idempotent)."""
        if session.closed and session not in self.dispatcher.sessions and not session.held:
            return
        session.close()
        self.sticky.forget_session(session)
        self.dispatcher.remove_session(session)
        held = [(run_id, lease) for run_id, lease in session.held.items() if lease]
        session.held.clear()
        for run_id, lease_id in held:
            self.run_limits.release(run_id)
            if self._holders.get(run_id) is session:
                del self._holders[run_id]
            await self._requeue(run_id, lease_id)
        log.info("worker %s disconnected; re-queued %d runs", session.identity, len(held))

    def drain_worker(self, session: WorkerSession, reason: str) -> None:
        """Send a worker no more tasks; it finishes or releases what it holds."""
        session.draining = True
        self.sticky.forget_session(session)  # the worker drops the runs it keeps live
        self.dispatcher.unstick(session)
        log.info(
            "worker %s draining (%s); holds %d runs", session.identity, reason, len(session.held)
        )

    async def expire_worker(self, session: WorkerSession) -> None:
        """End the stream of a worker that went silent and re-queue its runs.

        The worker is told (cancellations, then the end of its stream) in case
        it is only slow; whatever it sends later carries a lost lease.
        """
        log.warning(
            "worker %s sent nothing for %.1f s; its lease expired",
            session.identity,
            session.silent_for(),
        )
        for run_id, lease_id in session.held.items():
            if lease_id:
                session.send(Cancellation(run_id, lease_id, "lease expired"))
        session.close(
            Unavailable(
                f"the worker sent nothing for {session.silent_for():.1f} s, longer than the "
                "lease timeout; its runs went back to the queue"
            )
        )
        await self.disconnect_worker(session)

    async def apply(self, session: WorkerSession, command: Command) -> CommandResult:
        """Apply one worker command and return its result (after commit)."""
        try:
            return await self._apply(session, command)
        except EngineError as exc:
            action = command.action
            if not isinstance(action, RecordEvent) and (
                not isinstance(action, Malformed) or action.fails_run
            ):
                await self._fail_invalid(session, command, str(exc))
            return CommandResult(command.command_id, CommandStatus.INVALID, str(exc))
        except Exception:
            log.exception("command %d for run %s failed", command.command_id, command.run_id)
            await self._hand_out_again(session, command.run_id, command.lease_id)
            return CommandResult(
                command.command_id,
                CommandStatus.INTERNAL_ERROR,
                "the server could not record the command; the run will be retried",
            )

    async def _hand_out_again(self, session: WorkerSession, run_id: str, lease_id: int) -> None:
        """After a command failed inside the server, the worker drops the run: stop
        holding it for that worker and re-queue it. Should the re-queue fail too (the
        database is unreachable), the stored lease, no longer extended, expires and
        the lease sweep re-queues it."""
        if session.held.get(run_id) != lease_id:
            return
        self._let_go(session, run_id)
        session.send(Cancellation(run_id, lease_id, "a command of the run failed in the server"))
        try:
            await self._requeue(run_id, lease_id)
        except Exception:
            log.exception("re-queueing run %s failed; its lease will expire", run_id)

    async def _fail_invalid(self, session: WorkerSession, command: Command, reason: str) -> None:
        """A run whose worker sent a command that can never be recorded (e.g. a
        result over the payload limit) would fail the same way on every retry:
        fail it with the reason, and tell the worker to stop it."""
        step_key = command.action.step.step_key if isinstance(command.action, RecordStep) else ""
        error = ErrorDetails("stepd.InvalidCommand", reason, step_key=step_key)
        if await self._fail_held(
            session, command.run_id, command.lease_id, error, FailureReason.WORKFLOW_ERROR
        ):
            log.warning(
                "run %s failed: its worker sent an invalid command: %s", command.run_id, reason
            )

    async def _fail_held(
        self,
        session: WorkerSession,
        run_id: str,
        lease_id: int,
        error: ErrorDetails,
        reason: FailureReason,
    ) -> bool:
        """Fail a run that ``session`` holds, for a reason of the server's, and tell
        the worker to stop it. False when the lease was gone already."""
        run = await self._finish(
            run_id,
            lease_id,
            RunEvent.FAIL,
            {
                "error_type": error.type,
                "error_message": error.message,
                "error_traceback": error.traceback,
                "error_step_key": error.step_key,
                "error_attempt": error.attempt,
                "failure_reason": reason.value,
            },
        )
        if run is None:
            return False
        self._let_go(session, run_id)
        session.send(Cancellation(run_id, lease_id, f"run failed: {error.message}"))
        self.timers.forget_run(run_id)
        await self.store.abandon_waits(run_id)
        self._notify_terminal(run)
        return True

    # -- leases ------------------------------------------------------------------

    async def _watch_leases(self) -> None:
        period = min(1.0, self.config.lease_timeout_ms / 4000)
        while True:
            await asyncio.sleep(period)
            try:
                await self._check_leases()
            except Exception:
                log.exception("lease check failed")

    async def _check_leases(self) -> None:
        """Expire silent workers, keep live workers' stored leases ahead of
        time, and re-queue stored leases that nobody here holds any more (a
        previous server process, or a replica, that died)."""
        timeout = self.config.lease_timeout_ms / 1000
        heartbeat = self.config.heartbeat_interval_ms / 1000
        for session in self.dispatcher.sessions:
            if session.silent_for() > timeout:
                await self.expire_worker(session)
                continue
            if time.monotonic() - session.leases_extended_at >= heartbeat:
                session.leases_extended_at = time.monotonic()
                held = [run_id for run_id, lease in session.held.items() if lease]
                if held:
                    await self.store.extend_leases(
                        session.lease_owner, held, now_ms() + self.config.lease_timeout_ms
                    )
        for attempt in self.run_limits.overdue(now_ms()):
            await self.policy.end_overdue_attempt(attempt)
        for run in await self.store.expired_leases(now_ms(), EXPIRY_SWEEP_LIMIT):
            holder = self._holders.get(run.run_id)
            if holder is not None and not holder.closed:
                continue
            log.info("lease %d of run %s expired; re-queueing it", run.lease_id, run.run_id)
            await self._requeue(run.run_id, run.lease_id)

    # -- internals -------------------------------------------------------------

    async def _apply(self, session: WorkerSession, command: Command) -> CommandResult:
        cid, run_id, lease_id = command.command_id, command.run_id, command.lease_id
        action = command.action
        if action is None:
            return CommandResult(cid, CommandStatus.INVALID, "command has no action")
        if not lease_id or session.held.get(run_id) != lease_id:
            return self._lease_lost(cid, run_id)
        if isinstance(action, Malformed):
            raise InvalidArgument(action.reason)
        limit = self.config.max_payload_bytes
        if isinstance(action, StartStep):
            return self.policy.start_step(cid, run_id, lease_id, action)
        if isinstance(action, StartChild):
            return await self.children.start(session, cid, run_id, lease_id, action)
        if isinstance(action, HoldRun):
            return await self.children.hold(session, cid, run_id, lease_id, action)
        if isinstance(action, RecordStep):
            step = action.step
            if not step.step_key:
                raise InvalidArgument("record_step.step.step_key is required")
            if self.run_limits.full(run_id):
                return await self.policy.journal_full(session, cid, run_id, lease_id, step.step_key)
            if action.result is not None:
                result_json = check_json_payload(
                    "record_step.step.result", action.result.json, action.result.encoding, limit
                )
                step = replace(step, result_json=result_json)
            outcome = await self.store.record_step(run_id, lease_id, step)
            if outcome.status is RecordStepStatus.LEASE_LOST:
                return self._lease_lost(cid, run_id, session)
            self.run_limits.attempt_ended(run_id, step.step_key)
            if outcome.status is RecordStepStatus.DUPLICATE:
                return CommandResult(cid, CommandStatus.DUPLICATE, "", outcome.existing)
            self.run_limits.added(run_id)
            return CommandResult(cid, CommandStatus.OK)
        if isinstance(action, CompleteRun):
            result_json = check_json_payload(
                "complete_run.result", action.result.json, action.result.encoding, limit
            )
            run = await self._finish(
                run_id, lease_id, RunEvent.COMPLETE, {"result_json": result_json}
            )
        elif isinstance(action, FailRun):
            err = action.error
            run = await self._finish(
                run_id,
                lease_id,
                RunEvent.FAIL,
                {
                    "error_type": err.type,
                    "error_message": err.message,
                    "error_traceback": err.traceback,
                    "error_step_key": err.step_key,
                    "error_attempt": err.attempt,
                    "failure_reason": FailureReason.WORKFLOW_ERROR.value,
                },
            )
        elif isinstance(action, ReleaseRun):
            run = await self._finish(run_id, lease_id, RunEvent.RELEASE, {})
            if run is not None:
                self._make_ready(run)
        elif isinstance(action, SuspendRun):
            return await self._suspend(session, cid, run_id, lease_id, action.waits)
        elif isinstance(action, RecordEvent):
            if not action.entry_key or not action.name:
                raise InvalidArgument("record_event needs an entry_key and a name")
            payload = check_json_payload(
                "record_event.payload", action.payload.json, action.payload.encoding, limit
            )
            if not await self.store.record_event(
                run_id, lease_id, action.entry_key, action.name, payload
            ):
                return self._lease_lost(cid, run_id, session)
            return CommandResult(cid, CommandStatus.OK)
        else:
            raise InvalidArgument(f"unknown command {type(action).__name__}")
        if run is None:
            return self._lease_lost(cid, run_id, session)
        self._let_go(session, run_id)
        if run.status.is_terminal:
            self._notify_terminal(run)
        return CommandResult(cid, CommandStatus.OK)

    async def _suspend(
        self,
        session: WorkerSession,
        cid: int,
        run_id: str,
        lease_id: int,
        waits: tuple[WaitSpec, ...],
    ) -> CommandResult:
        check_waits(waits)
        if self.run_limits.full(run_id):  # waking would add an entry it has no room for
            return await self.policy.journal_full(session, cid, run_id, lease_id, "")
        outcome = await self.store.suspend_run(run_id, lease_id, waits)
        if outcome.status is SuspendStatus.LEASE_LOST:
            return self._lease_lost(cid, run_id, session)
        entries = self.run_limits.entries(run_id)
        self._let_go(session, run_id)
        if entries is not None:  # the worker may keep it live: offer it there first
            self.sticky.remember(session, run_id, lease_id, entries)
        if outcome.status is SuspendStatus.WOKEN and outcome.run is not None:
            self._make_ready(outcome.run)
        for timer in outcome.timers:
            self.timers.schedule(timer)
        return CommandResult(cid, CommandStatus.OK)

    async def _fire_timer(self, run_id: str, wait_key: str) -> None:
        if wait_key == RUN_EXPIRY_KEY:
            await self.policy.expire(run_id)
            return
        woken = await self.store.fire_timer(run_id, wait_key)
        if woken is not None:
            self._make_ready(woken)

    async def _finish(
        self, run_id: str, lease_id: int, event: RunEvent, values: dict[str, object]
    ) -> RunRecord | None:
        return await self.store.transition_run(
            run_id,
            transitions.sources(event),
            transitions.target(event),
            lease_id=lease_id,
            values={"lease_owner": None, **values},
        )

    def _lease_lost(
        self, cid: int, run_id: str, session: WorkerSession | None = None
    ) -> CommandResult:
        if session is not None:
            self._let_go(session, run_id)
        return CommandResult(
            cid,
            CommandStatus.LEASE_LOST,
            f"this worker no longer holds run {shown(run_id)} (cancelled, finished or re-queued)",
        )

    def _let_go(self, session: WorkerSession, run_id: str) -> None:
        self.run_limits.release(run_id)
        if session.held.pop(run_id, None) is not None:
            self.dispatcher.kick()
        if self._holders.get(run_id) is session:
            del self._holders[run_id]

    async def _claim_for(
        self, session: WorkerSession, run_id: str, served: tuple[str, str], pin_version: str
    ) -> None:
        """Claim a ready run for a session and send it the task."""
        limits = session.limits.get(served)
        parked = self.sticky.take_for(session, run_id)
        try:
            claimed = await self.store.claim_run(
                run_id,
                session.lease_owner,
                now_ms() + self.config.lease_timeout_ms,
                pin_version,
                limits.execution_timeout_ms if limits is not None else None,
                continues_lease=parked.lease_id if parked is not None else 0,
                known_entries=parked.entries if parked is not None else 0,
            )
        except Exception:
            log.exception("claiming run %s failed", run_id)
            claimed = None
        known = 0
        if parked is not None:
            if claimed is not None and claimed.continues_lease:
                known = parked.entries
            else:  # not claimed, or not right after the suspension: not a continuation
                self.sticky.let_go(run_id, parked, "the run is handed out afresh")
        if claimed is None:
            session.held.pop(run_id, None)
            self.dispatcher.kick()
            return
        lease_id = claimed.run.lease_id
        if session.closed:
            session.held.pop(run_id, None)
            await self._requeue(run_id, lease_id)
            return
        session.held[run_id] = lease_id
        self._holders[run_id] = session
        self.run_limits.hold(
            run_id,
            known + len(claimed.journal) + len(claimed.waits),
            limits.max_entries if limits is not None else None,
        )
        self.policy.schedule_expiry(claimed.run)
        session.send(replace(claimed, hook_secret=hook_tokens.run_secret(self._hook_key, run_id)))

    async def _requeue(self, run_id: str, lease_id: int) -> None:
        run = await self._finish(run_id, lease_id, RunEvent.RELEASE, {})
        if run is not None:
            self._make_ready(run)

    def _make_ready(self, run: RunRecord, *, announce: bool = True) -> None:
        not_before = run.start_time_not_before
        if not_before is not None and not_before > now_ms():
            # Held in memory only when due within the timers' horizon.
            self.starts.schedule(DueTimer(run.run_id, "start", not_before))
            return
        parked = self.sticky.get(run.run_id)
        if parked is not None:
            if parked.session.has_room_for_continuation():
                self.dispatcher.push_to(
                    parked.session, run.workflow_name, run.workflow_version, run.run_id
                )
                return
            self.sticky.drop(run.run_id, "its worker has no room; the run continues elsewhere")
        resumed = run.dispatch_count > 0
        self.dispatcher.push(run.workflow_name, run.workflow_version, run.run_id, resumed=resumed)
        if announce:
            self.replicas.ready(run)

    async def _start_due(self, run_id: str, _key: str) -> None:
        run = await self.store.get_run(run_id)
        if run is not None and run.status is RunStatus.PENDING:
            # Every replica's timer fires for a delayed start: none need be told.
            self._make_ready(run, announce=False)

    def _after_cancel(self, run: RunRecord, reason: str) -> None:
        session = self._holders.pop(run.run_id, None)
        self.run_limits.release(run.run_id)
        if session is not None:
            lease_id = session.held.pop(run.run_id, 0)
            session.send(Cancellation(run.run_id, lease_id, reason))
            self.dispatcher.kick()
        self._notify_terminal(run)

    def _notify_terminal(self, run: RunRecord) -> None:
        self.sticky.drop(run.run_id, f"run {run.status.value}")
        self.children.on_terminal(run)
        self.replicas.ended(run.run_id)
        self._answer_waiters(run)

    @property
    def waited_runs(self) -> list[str]:
        """The runs that ``GetRun(wait=true)`` callers wait for here."""
        return list(self._run_waiters)

    def answer_waiters(self, run: RunRecord) -> None:
        """Answer the callers waiting for a run that ended."""
        self._answer_waiters(run)

    def _answer_waiters(self, run: RunRecord) -> None:
        for waiter in self._run_waiters.get(run.run_id, ()):
            if not waiter.done():
                waiter.set_result(run)

    async def run_ended_elsewhere(self, run_id: str) -> None:
        """Another replica ended a run: answer the callers waiting for it here,
        and stop a worker of this replica that still holds it."""
        if run_id not in self._run_waiters and run_id not in self._holders:
            return
        run = await self.store.get_run(run_id)
        if run is None or not run.status.is_terminal:
            return
        session = self._holders.pop(run_id, None)
        if session is not None:
            self.run_limits.release(run_id)
            lease_id = session.held.pop(run_id, 0)
            session.send(Cancellation(run_id, lease_id, f"run {run.status.value} elsewhere"))
            self.dispatcher.kick()
        self.timers.forget_run(run_id)
        self._answer_waiters(run)

    async def _existing(self, run_id: str) -> RunRecord:
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {shown(run_id)} not found")
        return run
