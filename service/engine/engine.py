"""The engine: the one object the gRPC handlers call.

Handlers call the engine; the engine calls the store. The engine composes the
run handling (docs/architecture.md, "Inside the engine"): the lease ledger at
the bottom (``ledger.py``), the run lifecycle above it (``lifecycle.py``),
whose listeners and helpers (children, the failure policy, the replica link,
``GetRun`` waiters) receive their collaborators here, and the worker commands
(``worker_commands.py``). What is left here is the client API, worker
sessions coming and going, the lease sweep and handing runs out. Every status
change is a conditional store write guarded by the transition table
(``transitions.py``), and every answer to a caller or worker is sent only
after its write committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.config import ServerConfig
from stepd.server.domain import (
    NO_TRACE,
    RUN_EXPIRY_KEY,
    ClaimedRun,
    ClaimRequest,
    CreateRunOutcome,
    HistoryCursor,
    HistoryEntry,
    HookStatus,
    NewRun,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalStatus,
    TraceContext,
    WorkflowLimits,
    is_sleep_key,
    run_fields,
)
from stepd.server.domain_flow import FlowLimitState
from stepd.server.domain_schedules import WorkflowDeclaration
from stepd.server.engine import hook_tokens
from stepd.server.engine.children import ChildRuns
from stepd.server.engine.commands import Command
from stepd.server.engine.concurrency import ConcurrencyControl
from stepd.server.engine.debounce import debounce_reason
from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.errors import (
    AlreadyExists,
    FailedPrecondition,
    HookAlreadyExecuted,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from stepd.server.engine.faults import FaultPolicy, RunFaults
from stepd.server.engine.flow_settings import FlowDeclarations
from stepd.server.engine.ledger import LeaseLedger
from stepd.server.engine.lifecycle import RunLifecycle, RunListener
from stepd.server.engine.observer import EngineObserver
from stepd.server.engine.pauses import PauseSensor
from stepd.server.engine.payloads import check_json_payload
from stepd.server.engine.priorities import check_priority
from stepd.server.engine.rate_limits import RateLimits
from stepd.server.engine.registry import WorkflowRegistry
from stepd.server.engine.replicas import REPLICA_TIMER_HORIZON_MS, ReplicaLink
from stepd.server.engine.retention import Retention
from stepd.server.engine.run_actions import RunActions
from stepd.server.engine.run_details import RunDetails, run_details
from stepd.server.engine.run_limits import RunLimits, journal_bytes
from stepd.server.engine.run_policy import RunPolicy
from stepd.server.engine.schedules import Scheduler
from stepd.server.engine.sessions import Cancellation, WorkerSession
from stepd.server.engine.sticky import StickyRuns
from stepd.server.engine.timers import EarlyFiring, TimerSchedule
from stepd.server.engine.validation import (
    MAX_ID_LENGTH,
    MAX_PAGE_BYTES,
    MAX_VERSIONS_PER_WORKFLOW,
    MAX_WORKFLOWS,
    check_id,
    shown,
)
from stepd.server.engine.waiters import RunWaiters, UnendedRuns
from stepd.server.engine.watch import RunWatchers, WatchLimits, WatchUpdate, watch
from stepd.server.engine.worker_commands import WorkerCommands
from stepd.server.engine.workers import WorkerDirectory
from stepd.server.store.base import ConcurrencyRefusedError, RunConflictError, Store
from stepd.server.store.errors import StoreUnavailableError
from stepd.server.store.notify import channel_for
from stepd.server.store.schedules import RESERVED_KEY_PREFIX
from stepd.server.unheard import Unheard

log = logging.getLogger("stepd.engine")

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
#: Most flow-control limits ListFlowLimits and /metrics show.
MAX_FLOW_LIMITS = 1000
#: Most runs created here that are remembered as not ended (``get_run`` waits
#: for their end without reading them first); older ones are read.
UNENDED_RUNS_KEPT = 65_536
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
    concurrency_key: str | None = None
    # The caller's W3C trace context, stored with the run.
    trace: TraceContext = NO_TRACE
    # The run's priority (None: the workflow's default).
    priority: int | None = None
    # The trigger's debounce key (None: the one the input gives).
    debounce_key: str | None = None


@dataclass(frozen=True, slots=True)
class Triggered:
    """What a trigger did: the run, whether its idempotency key named it already,
    and whether the trigger was folded into it (debounce)."""

    run: RunRecord
    already_existed: bool
    debounced: bool = False


class Engine:
    """Runs' life cycle on one server process over one store.

    ``clock`` is the engine's notion of now and arms its timers (``clock.py``);
    it must be the store's clock too.
    """

    def __init__(self, store: Store, config: ServerConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.registry = WorkflowRegistry()
        self.run_limits = RunLimits(config.max_journal_entries, config.max_journal_bytes)
        self.dispatcher = Dispatcher(self._claim_for)
        self.sticky = StickyRuns()  # suspended runs kept live by their worker
        self.ledger = LeaseLedger(self.dispatcher.kick, self.run_limits.release)
        self.waiters = RunWaiters()
        self.watchers = RunWatchers()  # WatchRun streams, woken as writes commit
        store.on_history(self.watchers.touched)
        channel = channel_for(config.database)
        # Replicas load timers a shorter way ahead: those a dead replica held fire soon.
        horizon = REPLICA_TIMER_HORIZON_MS if channel is not None else 60_000
        early = EarlyFiring(
            clock.lead_ms(config.timer_lead_ms), self._fire_timer_early, is_sleep_key
        )
        self.timers = TimerSchedule(store, self._fire_timer, horizon, clock=clock, early=early)
        # Delayed starts: pending runs whose start time is still ahead.
        self.starts = TimerSchedule(
            store,
            self._start_due,
            horizon,
            load=lambda until, n: store.delayed_starts(clock.now_ms(), until, n),
            clock=clock,
        )
        self.lifecycle = RunLifecycle(
            store, self.ledger, self.dispatcher, self.sticky, self.timers, self.starts, clock=clock
        )
        self.concurrency = ConcurrencyControl(
            store,
            self.lifecycle.make_ready,
            self.lifecycle.cancel,
            sweep_seconds=config.concurrency_sweep_ms / 1000,
            clock=clock,
        )
        self.flow = FlowDeclarations(store, clock=clock)
        self.rates = RateLimits(store, self.lifecycle.make_ready, clock=clock)
        self.policy = RunPolicy(
            store,
            self.run_limits,
            self.timers,
            self.ledger,
            self.lifecycle,
            self.dispatcher,
            clock=clock,
        )
        self.children = ChildRuns(
            store,
            config,
            self.registry,
            self.run_limits,
            self.ledger,
            self.lifecycle,
            self.dispatcher,
            self.policy,
            clock=clock,
        )
        self.replicas = ReplicaLink(
            channel,
            config.replica_poll_ms / 1000,
            store,
            self.dispatcher,
            self.waiters,
            ended_elsewhere=self.run_ended_elsewhere,
            recover=self.children.recover,
        )
        self.schedules = Scheduler(
            store,
            config,
            self.registry,
            self.lifecycle.make_ready,
            self.cancel_run,
            horizon,
            clock=clock,
        )
        # Runs whose claim or command failed in the server: back off, then fail.
        self.faults = FaultPolicy(self.lifecycle, self.dispatcher, RunFaults())
        self.commands = WorkerCommands(
            store,
            config,
            self.ledger,
            self.lifecycle,
            self.run_limits,
            self.policy,
            self.children,
            self.sticky,
            self.timers,
            self.faults,
            rates=self.rates,
        )
        # Operator actions on whole runs; retention; the list of workers.
        self.actions = RunActions(
            store, config, self.registry, self.lifecycle, self.policy, clock=clock
        )
        self.retention = Retention(store, config.retention_ms, clock=clock)
        self.workers = WorkerDirectory(
            store,
            self.replicas.replica_id,
            lambda: self.dispatcher.sessions,
            replicated=self.replicas.replicated,
            clock=clock,
        )
        # Who hears of a run made ready or ended, in this order.
        self.lifecycle.on_ready(self.replicas.ready)
        self.lifecycle.on_end(self.children.on_terminal)
        self.lifecycle.on_end(self.replicas.ended)
        self.lifecycle.on_end(self.waiters.answer)
        # Runs created here and not ended: their end is answered here (no replica).
        self._unended = UnendedRuns(UNENDED_RUNS_KEPT)
        self.lifecycle.on_end(self._unended.ended)
        self.lifecycle.on_end(self.concurrency.run_ended)
        store.on_key_checked(self.concurrency.key_checked)
        self.lifecycle.on_waiting(self.concurrency.run_waiting)
        self.lifecycle.gate_late_starts(self.rates.late_start)
        self.lifecycle.on_end(self.rates.forget)
        self.replicas.gate_late_starts(self.rates.late_start)
        self.lifecycle.on_end(lambda run: self.faults.forget(run.run_id))
        self._handed_out_listeners: list[RunListener] = []
        # Observers of runs made ready, told of a run claimed as it was created.
        self._ready_listeners: list[RunListener] = []
        self._lease_monitor: asyncio.Task[None] | None = None
        self._pauses: PauseSensor | None = None
        self._closing = False
        # Runs being stored whose Trigger caller went away.
        self._unheard = Unheard()
        # The keys hook tokens are derived from: the first mints, all verify.
        self._hook_keys: tuple[bytes, ...] = ()

    def observe(self, observer: EngineObserver) -> None:
        """Tell ``observer`` of runs made ready, handed out and ended, and of steps."""
        self.lifecycle.on_ready(observer.run_ready)
        self._ready_listeners.append(observer.run_ready)
        self.lifecycle.on_end(observer.run_ended)
        self._handed_out_listeners.append(observer.run_handed_out)
        self.commands.on_step(observer.step_recorded)

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
        self._hook_keys = hook_tokens.server_keys(
            await self.store.server_secret("hook_key"), self.config.hook_secrets
        )
        if not self.replicas.replicated:
            await self._recover_all()
        await self.children.recover()
        await self.replicas.start()
        self._lease_monitor = asyncio.create_task(self._watch_leases())
        self.timers.start()
        self.starts.start()
        self.schedules.start()
        self.concurrency.start()
        self.rates.start()
        self.retention.start()
        self.workers.start()

    async def _recover_all(self) -> None:
        recovered = 0
        for run in await self.store.runs_in_status([RunStatus.RUNNING]):
            # No worker holds a run across a restart of this server.
            if await self.lifecycle.requeue(run.run_id, run.lease_id):
                recovered += 1
        for run in await self.store.runs_in_status([RunStatus.PENDING]):
            self.lifecycle.make_ready(run)
            recovered += 1
        if recovered:
            log.info("recovered %d unfinished runs", recovered)

    def settled(self) -> bool:
        """True when nothing moves here until a timer fires or a caller acts: no run
        is queued for a worker, offered to one, being handed out or held by one, and
        no timer or child follow-up is being applied. (A run queued for a workflow
        that no worker here serves counts as queued.)"""
        if self.dispatcher.ready_count():
            return False
        if any(s.held or s.continuations for s in self.dispatcher.sessions):
            return False
        timers = (self.timers, self.starts, self.schedules.timers)
        return not any(t.firing for t in timers) and not self.children.busy

    async def close(self) -> None:
        """Stop timers, end worker sessions and settle claims in flight."""
        self._closing = True
        await self.retention.close()
        await self.workers.close()
        await self.replicas.close()
        if self._lease_monitor is not None:
            self._lease_monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_monitor
        await self.timers.close()
        await self.starts.close()
        await self.schedules.close()
        await self.concurrency.close()
        await self.rates.close()
        await self.children.close()
        for session in self.dispatcher.sessions:
            session.close(Unavailable("the server is shutting down; reconnect"))
        await self.dispatcher.close()
        self.waiters.close()

    # -- client API ------------------------------------------------------------

    async def trigger(self, params: TriggerParams) -> Triggered:
        """Create a run (or find the idempotency key's run, or fold the trigger
        into its debounce key's pending run)."""
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
        if params.concurrency_key is not None and len(params.concurrency_key) > MAX_ID_LENGTH:
            raise InvalidArgument(f"concurrency_key is longer than {MAX_ID_LENGTH} characters")
        if params.priority is not None:
            check_priority(params.priority, "priority")
        if params.debounce_key is not None and len(params.debounce_key) > MAX_ID_LENGTH:
            raise InvalidArgument(f"debounce_key is longer than {MAX_ID_LENGTH} characters")
        input_json = check_json_payload(
            "input", params.input_json, params.input_encoding, self.config.max_payload_bytes
        )
        if params.workflow_version and self.registry.retired(name, params.workflow_version):
            raise FailedPrecondition(
                f"version {params.workflow_version!r} of {name!r} is retired; "
                "trigger another version, or none for the current one"
            )
        version = params.workflow_version or self.registry.current(name) or ""
        run_id = params.run_id or uuid.uuid4().hex
        now = self.clock.now_ms()
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
            concurrency_key=params.concurrency_key,
            trace=params.trace,
            priority=params.priority,
            debounce_key=params.debounce_key,
        )
        # The caller may go away (a cancelled call) once the run is being stored:
        # the run is handed out or queued all the same.
        storing = asyncio.ensure_future(
            self._store_new(new, plain=_starts_plain(params), fresh_id=not params.run_id)
        )
        outcome = await self._unheard.finish(storing)
        existed = not outcome.created and not outcome.debounced
        return Triggered(outcome.run, existed, outcome.debounced)

    async def _store_new(self, new: NewRun, *, plain: bool, fresh_id: bool) -> CreateRunOutcome:
        """Store a new run and hand it out or queue it. A ``plain`` run that a
        worker has room for now is claimed as it is created: one transaction, and
        no pass through the ready queues. A run whose id this server made
        (``fresh_id``: no one else knew it before) is remembered as unended."""
        run_id = new.run_id
        slot = None
        if plain:
            slot = self.dispatcher.reserve_at_once(new.workflow_name, new.workflow_version, run_id)
        try:
            outcome = await self._create(new, slot)
        except BaseException:
            if slot is not None:
                self.ledger.give_up_claim(slot[0], run_id)
            raise
        if outcome.claimed is not None and slot is not None:
            session, served, _ = slot
            if fresh_id:
                self._created(outcome.run)
            for listener in self._ready_listeners:
                listener(outcome.run)
            await self._hand_out(session, outcome.claimed, session.limits.get(served))
            return outcome
        if slot is not None:
            self.ledger.give_up_claim(slot[0], run_id)
        if outcome.created:
            if fresh_id:
                self._created(outcome.run)
            self.lifecycle.make_ready(outcome.run)
            self.policy.schedule_expiry(outcome.run)
        return outcome

    def _created(self, run: RunRecord) -> None:
        """Remember a run just created here. Called before anything can have ended
        it: its id was not known outside this call, and no worker has it yet."""
        if not run.status.is_terminal:
            self._unended.add(run.run_id)

    async def _create(
        self, new: NewRun, slot: tuple[WorkerSession, tuple[str, str], str] | None
    ) -> CreateRunOutcome:
        """Store a new run; with a ``slot``, claim it for that session too when it
        may start at once."""
        claim: ClaimRequest | None = None
        if slot is not None:
            session, served, pin_version = slot
            limits = session.limits.get(served)
            claim = ClaimRequest(
                session.lease_owner,
                self.clock.now_ms() + self.config.lease_timeout_ms,
                pin_version,
                limits.execution_timeout_ms if limits is not None else None,
            )
        try:
            return await self.store.create_run(new, claim)
        except ConcurrencyRefusedError as refused:
            name = new.workflow_name
            raise FailedPrecondition(f"workflow {name!r} not started: {refused}") from None
        except RunConflictError:
            raise AlreadyExists(
                f"run_id {shown(new.run_id)} already exists; pick another id, or send the "
                "idempotency key that created it to get that run back"
            ) from None

    async def get_run(
        self, run_id: str, *, wait: bool = False, wait_seconds: float | None = None
    ) -> RunRecord:
        """Return a run; with ``wait``, first wait up to ``wait_seconds`` (None: the
        cap, config.max_wait_seconds; 0: not at all) for it to reach a terminal status."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        if not wait:
            return await self._existing(run_id)
        limit = self.config.max_wait_seconds
        timeout = limit if wait_seconds is None else min(wait_seconds, limit)
        if timeout <= 0:
            return await self._existing(run_id)
        # No first read for a run created here that has not ended: its end is
        # heard here, from this server or, with replicas, from the one that
        # ended it (``run_ended_elsewhere``). Without replicas, a run a worker of
        # this server holds can end only here too.
        unfinished = run_id in self._unended or (
            not self.replicas.replicated and self.ledger.holder(run_id) is not None
        )
        return await self.waiters.wait(
            run_id, lambda: self._existing(run_id), timeout, unfinished=unfinished
        )

    async def waiting_reason(self, run: RunRecord) -> str:
        """Why a pending run is not handed out yet ("" when nothing holds it back
        but a free worker)."""
        held = self.rates.waiting_reason(run) or debounce_reason(run, self.clock.now_ms())
        return held or await self.concurrency.waiting_reason(run)

    async def flow_limits(self) -> list[FlowLimitState]:
        """Every flow-control limit the workers declared and what waits under it
        (read from the store: every replica's runs)."""
        return await self.store.flow_overview(self.clock.now_ms(), MAX_FLOW_LIMITS)

    async def describe_run(
        self,
        run_id: str,
        *,
        wait: bool = False,
        wait_seconds: float | None = None,
        hook_tokens: bool = False,
    ) -> RunDetails:
        """``get_run``, with what the run waits for (hook tokens only with
        ``hook_tokens``) and whether a worker here serves it."""
        run = await self.get_run(run_id, wait=wait, wait_seconds=wait_seconds)
        token = self.hook_token if hook_tokens else None
        details = await run_details(self.store, run, self.registry.serves, token)
        if details.no_worker and await self.workers.served_elsewhere(
            run.workflow_name, run.workflow_version
        ):
            details = dataclasses.replace(details, no_worker=False)
        return details

    def hook_token(self, run_id: str, wait_key: str) -> str:
        """The token of a run's hook (the one its worker derives)."""
        secret = hook_tokens.run_secret(self._hook_keys[0], run_id)
        return hook_tokens.make_token(secret, run_id, wait_key)

    def watch_run(self, run_id: str, cursor: HistoryCursor) -> AsyncIterator[WatchUpdate]:
        """A run's history after ``cursor``, then each entry as it commits, until
        the run ends (see ``watch.py``)."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        poll = self.config.replica_poll_ms / 1000 if self.replicas.replicated else None
        limits = WatchLimits(MAX_PAGE_SIZE, MAX_PAGE_BYTES, poll_seconds=poll)
        return watch(self.store, self.watchers, run_id, cursor, limits)

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

    async def cancel_run(
        self, run_id: str, reason: str, *, actor: str = ""
    ) -> tuple[RunRecord, bool]:
        """Cancel an unfinished run; return it and whether it was already cancelled.
        ``actor`` (the caller's API key id) goes into the run's history."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        run, already = await self.lifecycle.cancel(run_id, reason or "cancelled", actor=actor)
        if not already:
            log.info(
                "run %s cancelled by key %s: %s",
                run_id,
                actor or "-",
                shown(run.cancel_reason or ""),
                extra=run_fields(run_id, run.workflow_name),
            )
        return run, already

    async def signal(
        self,
        run_id: str,
        name: str,
        payload_json: str,
        encoding: str,
        request_id: str,
        *,
        actor: str = "",
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
        outcome = await self.store.send_signal(
            run_id, name, payload, request_id or None, actor=actor
        )
        if outcome.status is SignalStatus.UNKNOWN_RUN:
            raise NotFound(f"run {shown(run_id)} not found")
        if outcome.status is SignalStatus.FINISHED_RUN:
            status = outcome.run_status.value if outcome.run_status else "finished"
            raise FailedPrecondition(
                f"run {shown(run_id)} is already {status}; signals go to unfinished runs"
            )
        if outcome.woken is not None:
            self.lifecycle.make_ready(outcome.woken)

    async def execute_hook(
        self, token: str, payload_json: str, encoding: str, *, actor: str = ""
    ) -> str:
        """Execute the hook a token names; return its run's id."""
        if not token:
            raise InvalidArgument("token is required")
        ref = hook_tokens.verify(self._hook_keys, token)
        if ref is None:
            raise NotFound("no hook has this token; check that it was copied whole")
        payload = check_json_payload(
            "payload", payload_json, encoding, self.config.max_payload_bytes
        )
        outcome = await self.store.execute_hook(
            ref.run_id, ref.wait_key, hook_tokens.token_hash(token), payload, actor=actor
        )
        if outcome.status is HookStatus.UNKNOWN_RUN:
            raise NotFound("no hook has this token; its run no longer exists")
        if outcome.status is HookStatus.ALREADY_EXECUTED:
            raise HookAlreadyExecuted("this hook was already executed; a hook executes once")
        if outcome.status is HookStatus.EXPIRED:
            raise FailedPrecondition(
                "this hook expired: its run finished or stopped waiting for it"
            )
        if outcome.woken is not None:
            self.lifecycle.make_ready(outcome.woken)
        return ref.run_id

    async def publish_event(
        self, name: str, payload_json: str, encoding: str, event_id: str, *, actor: str = ""
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
        outcome = await self.store.publish_event(
            event_id,
            name,
            payload,
            actor=actor,
            current_versions=self.registry.current_versions(),
        )
        for run in (*outcome.woken, *outcome.started):
            self.lifecycle.make_ready(run)
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
        early_capacity: int = 0,
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
        await self.flow.declare(declarations)
        await self.concurrency.declare(declarations)
        await asyncio.sleep(0)  # a large hello: let the event loop have a turn
        new_pairs = [p for p in pairs if not self.registry.knows(*p)]
        self._check_room(new_pairs)
        if new_pairs:
            await self.store.register_workflows(new_pairs)
            self.registry.add(new_pairs, self.clock.now_ms())
        self.registry.serving(pairs)  # the current version may be one of them now
        try:
            await self.schedules.declare(declarations)
        except BaseException:
            self.registry.stopped_serving(pairs)
            raise
        session = WorkerSession(
            worker_id,
            identity or worker_id,
            pairs,
            capacity,
            limits,
            max_cached_runs,
            pinnable=self.registry.pinnable,
            early_capacity=early_capacity,
            connect_time=self.clock.now_ms(),
        )
        self.dispatcher.add_session(session)
        self.replicas.poll_soon()  # runs made ready elsewhere before it came
        log.info("worker %s connected (capacity %d)", session.identity, capacity)
        return session

    def _check_room(self, new_pairs: Sequence[tuple[str, str]]) -> None:
        """Refuse versions past the registry's bounds (versions per workflow,
        workflows in all): each stays stored for good."""
        new_names = Counter(name for name, _ in new_pairs)
        unknown = sum(1 for name in new_names if not self.registry.version_count(name))
        if unknown and self.registry.workflow_count() + unknown > MAX_WORKFLOWS:
            raise ResourceExhausted(
                f"the server keeps at most {MAX_WORKFLOWS} workflows registered; "
                f"this hello would add {unknown} more"
            )
        for name, count in new_names.items():
            if self.registry.version_count(name) + count > MAX_VERSIONS_PER_WORKFLOW:
                raise ResourceExhausted(
                    f"the server keeps at most {MAX_VERSIONS_PER_WORKFLOW} versions of a "
                    f"workflow registered, and {shown(name)} would pass it"
                )

    async def disconnect_worker(self, session: WorkerSession) -> None:
        """Forget a worker's stream and re-queue every run it held (idempotent)."""
        if session.closed and session not in self.dispatcher.sessions and not session.held:
            return
        session.close()
        self.sticky.forget_session(session)
        if session in self.dispatcher.sessions:
            self.registry.stopped_serving(session.serves)
        self.dispatcher.remove_session(session)
        held = self.ledger.clear(session)
        for run_id, lease_id in held:
            try:
                await self.lifecycle.requeue(run_id, lease_id)
            except StoreUnavailableError as exc:  # its stored lease expires instead
                log.warning("re-queueing run %s: storage unavailable (%s)", run_id, exc)
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

    def heard_from(self, session: WorkerSession) -> None:
        """The worker sent something: it is alive (a suspect worker may take runs again)."""
        if session.touch():
            self.dispatcher.kick()

    async def apply_commands(self, session: WorkerSession, commands: Sequence[Command]) -> None:
        """Apply a batch of a worker's commands in order (``worker_commands.py``)
        and send each result to the worker after its commit."""
        await self.commands.apply_batch(session, commands)

    # -- leases ------------------------------------------------------------------

    async def _watch_leases(self) -> None:
        period = min(1.0, self.config.lease_timeout_ms / 4000)
        self._pauses = PauseSensor(period)
        self._pauses.start()
        storage_down = False
        try:
            while True:
                await asyncio.sleep(period)
                try:
                    await self._check_leases()
                except StoreUnavailableError as exc:
                    if not storage_down:  # one line per outage
                        log.warning("lease check: storage unavailable (%s)", exc)
                    storage_down = True
                except Exception:
                    log.exception("lease check failed")
                else:
                    storage_down = False
        finally:
            await self._pauses.close()

    def _excuse_any_pause(self) -> None:
        """Excuse the time the server did not run since the last look (the lease
        check looks before each decision: a pause may fall into any of its awaits)."""
        if self._pauses is not None:
            paused = self._pauses.collect()
            if paused:
                self._excuse_pause(paused)

    def _excuse_pause(self, seconds: float) -> None:
        """The server did not run for ``seconds``: its workers' silence and their
        step attempts' time meanwhile do not count, and their stored leases are
        extended at once."""
        log.log(
            logging.WARNING if seconds >= 1.0 else logging.INFO,
            "the server did not run for %.1f s (paused or blocked); leases and step "
            "timeouts are extended by that much",
            seconds,
        )
        for session in self.dispatcher.sessions:
            session.excuse(seconds)
        self.run_limits.postpone_attempts(int(seconds * 1000))

    async def _check_leases(self) -> None:
        """Expire silent workers, keep live workers' stored leases ahead of
        time, and re-queue stored leases that nobody here holds any more (a
        previous server process, or a replica, that died)."""
        timeout = self.config.lease_timeout_ms / 1000
        heartbeat = self.config.heartbeat_interval_ms / 1000
        for session in self.dispatcher.sessions:
            self._excuse_any_pause()
            if session.silent_for() > timeout:
                await self.expire_worker(session)
                continue
            if time.monotonic() - session.leases_extended_at >= heartbeat:
                session.leases_extended_at = time.monotonic()
                held = [run_id for run_id, lease in session.held.items() if lease]
                if held:
                    expires = self.clock.now_ms() + self.config.lease_timeout_ms
                    await self.store.extend_leases(session.lease_owner, held, expires)
        self._excuse_any_pause()
        for attempt in self.run_limits.overdue(self.clock.now_ms()):
            await self.policy.end_overdue_attempt(attempt)
        self._excuse_any_pause()
        expired = await self.store.expired_leases(self.clock.now_ms(), EXPIRY_SWEEP_LIMIT)
        self._excuse_any_pause()
        for run in expired:
            holder = self.ledger.holder(run.run_id)
            if holder is not None and not holder.closed:
                continue
            log.info(
                "lease %d of run %s expired; re-queueing it",
                run.lease_id,
                run.run_id,
                extra=run_fields(run.run_id, run.workflow_name, run.lease_id),
            )
            await self.lifecycle.requeue(run.run_id, run.lease_id)

    # -- handing runs out, timers ------------------------------------------------

    async def _fire_timer(self, run_id: str, wait_key: str) -> None:
        if wait_key == RUN_EXPIRY_KEY:
            await self.policy.expire(run_id)
            return
        woken = await self.store.fire_timer(run_id, wait_key)
        if woken is not None:
            self.lifecycle.make_ready(woken)

    async def _fire_timer_early(self, run_id: str, wait_key: str) -> bool:
        met, woken = await self.store.fire_timer_early(run_id, wait_key)
        if woken is not None:
            self.lifecycle.make_ready(woken)
        return met

    async def _claim_for(
        self, session: WorkerSession, run_id: str, served: tuple[str, str], pin_version: str
    ) -> None:
        """Claim a ready run for a session and send it the task."""
        if self.rates.released and not await self.rates.may_start(run_id):
            self.ledger.give_up_claim(session, run_id)  # it waits for its new start turn
            return
        limits = session.limits.get(served)
        parked = self.sticky.take_for(session, run_id)
        failure: Exception | None = None
        try:
            claimed = await self.store.claim_run(
                run_id,
                session.lease_owner,
                self.clock.now_ms() + self.config.lease_timeout_ms,
                pin_version,
                limits.execution_timeout_ms if limits is not None else None,
                continues_lease=parked.lease_id if parked is not None else 0,
                known_entries=parked.entries if parked is not None else 0,
            )
        except Exception as exc:
            claimed, failure = None, exc
        known = 0
        if parked is not None:
            if claimed is not None and claimed.continues_lease:
                known = parked.entries
            else:  # not claimed, or not right after the suspension: not a continuation
                self.sticky.let_go(run_id, parked, "the run is handed out afresh")
        if claimed is None:
            self.ledger.give_up_claim(session, run_id)
            if failure is not None:  # back in its queue after a delay (or failed)
                queue = (served[0], "" if pin_version else served[1])
                await self.faults.claim_failed(run_id, queue, failure)
            return
        await self._hand_out(
            session,
            claimed,
            limits,
            known,
            parked.size if parked is not None and known else 0,
        )

    async def _hand_out(
        self,
        session: WorkerSession,
        claimed: ClaimedRun,
        limits: WorkflowLimits | None,
        known: int = 0,
        known_size: int = 0,
    ) -> None:
        """Send a run claimed for ``session`` (under its reserved slot) to it; a
        continuation names the ``known`` entries (of ``known_size`` bytes) the
        worker has."""
        run_id = claimed.run.run_id
        lease_id = claimed.run.lease_id
        if session.closed:
            self.ledger.give_up_claim(session, run_id)
            await self.lifecycle.requeue(run_id, lease_id)
            return
        self.ledger.hold(session, run_id, lease_id)
        self.dispatcher.handed_out(run_id)
        if claimed.waits and session.early_capacity:
            ahead_ms = _met_ahead_ms(claimed, self.clock.now_ms())
            if ahead_ms > 0 and session.wait_out(run_id, ahead_ms / 1000):
                self.dispatcher.kick()  # its slot is free until the sleep's time
        self.run_limits.hold(
            run_id,
            known + len(claimed.journal) + len(claimed.waits),
            limits.max_entries if limits is not None else None,
            known_size + journal_bytes(claimed),
        )
        self.policy.schedule_expiry(claimed.run)
        hook_secret = hook_tokens.run_secret(self._hook_keys[0], run_id)
        session.send(replace(claimed, hook_secret=hook_secret))
        for listener in self._handed_out_listeners:
            listener(claimed.run)

    async def _start_due(self, run_id: str, _key: str) -> None:
        run = await self.store.get_run(run_id)
        if run is not None and run.status is RunStatus.PENDING:
            # Every replica's timer fires for a delayed start: none need be told.
            self.lifecycle.make_ready(run, announce=False)

    async def run_ended_elsewhere(self, run_id: str) -> None:
        """Another replica ended a run: answer the callers waiting for it here,
        and stop a worker of this replica that still holds it."""
        self._unended.forget(run_id)  # a wait that begins now reads it first
        self.watchers.touched(run_id)
        if not self.waiters.waits_for(run_id) and self.ledger.holder(run_id) is None:
            return
        run = await self.store.get_run(run_id)
        if run is None or not run.status.is_terminal:
            return
        self.ledger.take_back(run_id, f"run {run.status.value} elsewhere")
        self.timers.forget_run(run_id)
        self.waiters.answer(run)

    async def _existing(self, run_id: str) -> RunRecord:
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"run {shown(run_id)} not found")
        return run


def _met_ahead_ms(claimed: ClaimedRun, now_ms: int) -> int:
    """How long before its time the latest wait of a claimed run was met (0: none
    was met early)."""
    latest = max((wait.met_time for wait in claimed.waits), default=0)
    return max(latest - now_ms, 0)


def _starts_plain(params: TriggerParams) -> bool:
    """Whether a trigger asks for nothing that would hold its run in the ready
    queues or rank it there (a start time, a concurrency key, a priority, a
    debounce key)."""
    return not (
        params.start_time_not_before is not None
        or params.concurrency_key is not None
        or params.priority
        or params.debounce_key is not None
    )
