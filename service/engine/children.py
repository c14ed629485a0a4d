"""Child runs and held runs: the engine's side.

A workflow starts a child with ``start_child``: the store creates the child
(its id derived from the parent's id and the call's key, so a replay or a
crash never starts it twice) and the parent's journal entry in one
transaction. The parent then waits on the child like on any wait
(``child:N``). When a run ends, ``on_terminal`` meets its parent's wait on it
and cancels its own unfinished, attached children; both are also redone at
start-up (``recover``), so a crash between the end and the follow-up loses
nothing.

A worker whose replay meets a journal its code cannot have produced sends
``hold_run``: the run goes back to PENDING with the error on it, and the
dispatcher hands it only to workers that have not refused it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.config import ServerConfig
from stepd.server.domain import NewRun, RunRecord, run_fields
from stepd.server.engine.commands import CommandResult, CommandStatus, HoldRun, StartChild
from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.errors import EngineError, InvalidArgument
from stepd.server.engine.ledger import LeaseLedger
from stepd.server.engine.lifecycle import RunLifecycle
from stepd.server.engine.payloads import check_json_payload
from stepd.server.engine.registry import WorkflowRegistry
from stepd.server.engine.run_limits import RunLimits
from stepd.server.engine.run_policy import RunPolicy
from stepd.server.engine.sessions import WorkerSession
from stepd.server.engine.validation import MAX_ID_LENGTH, shown
from stepd.server.store.base import Store
from stepd.server.store.children import StartChildStatus
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.engine")


def child_run_id(parent_run_id: str, child_key: str) -> str:
    """The run id of the child a parent starts at ``child_key``: ``PARENT/child:N``, or
    ``child-`` and the SHA-256 (hex) of that when it is longer than an id may be."""
    derived = f"{parent_run_id}/{child_key}"
    if len(derived) <= MAX_ID_LENGTH:
        return derived
    return "child-" + hashlib.sha256(derived.encode()).hexdigest()


class ChildRuns:
    """Starts children, wakes parents, cascades cancellation, holds runs.

    Subscribe ``on_terminal`` to the lifecycle's ends. A started child or a woken
    parent goes to the ``lifecycle``; a cancelled child too; a held run to the
    ``dispatcher``'s held lane. A child's journal entry counts against the
    parent's limit (``limits``, ``policy``).
    """

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        registry: WorkflowRegistry,
        limits: RunLimits,
        ledger: LeaseLedger,
        lifecycle: RunLifecycle,
        dispatcher: Dispatcher,
        policy: RunPolicy,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._registry = registry
        self._limits = limits
        self._ledger = ledger
        self._lifecycle = lifecycle
        self._dispatcher = dispatcher
        self._policy = policy
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(
        self, session: WorkerSession, cid: int, run_id: str, lease_id: int, action: StartChild
    ) -> CommandResult:
        """Apply ``start_child``: create the child once, record the parent's entry."""
        if not action.child_key:
            raise InvalidArgument("start_child.child_key is required")
        name = action.workflow_name.strip()
        if not name:
            raise InvalidArgument("start_child.workflow_name is required")
        if len(name) > MAX_ID_LENGTH:
            raise InvalidArgument(f"start_child.workflow_name is longer than {MAX_ID_LENGTH}")
        if self._limits.full(run_id):
            return await self._policy.journal_full(session, cid, run_id, lease_id, action.child_key)
        input_json = check_json_payload(
            "start_child.input",
            action.input.json,
            action.input.encoding,
            self._config.max_payload_bytes,
        )
        child_id = child_run_id(run_id, action.child_key)
        new = NewRun(
            run_id=child_id,
            workflow_name=name,
            workflow_version=action.workflow_version or self._registry.current(name) or "",
            input_json=input_json,
            create_time=self._clock.now_ms(),
            parent_run_id=run_id,
            root_run_id=run_id,  # the store puts the parent's root here
            detached=action.detached,
            trace=action.trace,
        )
        outcome = await self._store.start_child(run_id, lease_id, action.child_key, new)
        if outcome.status is StartChildStatus.LEASE_LOST:
            return self._ledger.lease_lost(cid, run_id, session)
        if outcome.status is StartChildStatus.ID_TAKEN:
            raise InvalidArgument(
                f"start_child: run id {shown(child_id)} is taken by a run that is not a child of "
                f"run {shown(run_id)}; custom run ids of that form are reserved for child runs"
            )
        if outcome.child is not None:  # created now
            self._lifecycle.make_ready(outcome.child)
            self._policy.schedule_expiry(outcome.child)
        if outcome.status is StartChildStatus.RECORDED_BEFORE:
            return CommandResult(cid, CommandStatus.DUPLICATE, "", outcome.entry)
        self._limits.added(run_id)
        return CommandResult(cid, CommandStatus.OK, "", outcome.entry)

    async def hold(
        self, session: WorkerSession, cid: int, run_id: str, lease_id: int, action: HoldRun
    ) -> CommandResult:
        """Apply ``hold_run``: back to PENDING with the error, for other workers only."""
        error = action.error
        if not error.message:
            raise InvalidArgument("hold_run.error.message is required")
        run = await self._store.hold_run(run_id, lease_id, error)
        if run is None:
            return self._ledger.lease_lost(cid, run_id, session)
        self._ledger.let_go(session, run_id)
        log.warning(
            "run %s held by worker %s: %s",
            run_id,
            session.identity,
            error.message,
            extra=run_fields(run_id, run.workflow_name, lease_id),
        )
        self._dispatcher.hold(run.workflow_name, run.workflow_version, run_id, session.worker_id)
        return CommandResult(cid, CommandStatus.OK)

    def on_terminal(self, run: RunRecord) -> None:
        """A run ended: wake its parent's wait on it, cancel its attached children."""
        self._dispatcher.forget(run.run_id)
        if run.parent_run_id or run.has_children:
            self._spawn(self._after_end(run))

    async def recover(self) -> None:
        """Redo what a crash may have cut short after runs ended."""
        finished, parents = await self._store.child_recovery()
        for child in finished:
            await self._wake_parent(child)
        for parent_id in parents:
            await self._cancel_children(parent_id, f"parent run {parent_id} ended")

    @property
    def busy(self) -> bool:
        """True while a follow-up of a run's end (waking its parent, cancelling its
        children) is in flight."""
        return bool(self._tasks)

    async def close(self) -> None:
        """Let follow-ups in flight finish."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals -------------------------------------------------------------

    def _spawn(self, work: object) -> None:
        assert asyncio.iscoroutine(work)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_end(self, run: RunRecord) -> None:
        try:
            if run.parent_run_id:
                await self._wake_parent(run)
            if run.has_children:
                await self._cancel_children(
                    run.run_id, f"parent run {run.run_id} {run.status.value}"
                )
        except StoreUnavailableError as exc:
            log.warning(
                "follow-up of the end of run %s: storage unavailable (%s); the next start "
                "redoes it",
                run.run_id,
                exc,
                extra=run_fields(run.run_id, run.workflow_name),
            )
        except Exception:
            log.exception(
                "follow-up of the end of run %s failed; the next start redoes it",
                run.run_id,
                extra=run_fields(run.run_id, run.workflow_name),
            )

    async def _wake_parent(self, child: RunRecord) -> None:
        woken = await self._store.deliver_child(child)
        if woken is not None:
            self._lifecycle.make_ready(woken)

    async def _cancel_children(self, parent_id: str, reason: str) -> None:
        for child in await self._store.unfinished_children(parent_id):
            try:
                await self._lifecycle.cancel(child.run_id, reason)
            except EngineError:  # it ended meanwhile
                continue
