"""The commands a worker sends on its PollTask stream: one method each, and the
order a batch is applied in.

Each command is checked against the lease ledger first, then applied by the
method named after its field in ``WorkerCommand.command``
(``_apply_record_step``, ``_apply_suspend_run``, ...). Its result goes back
on the worker's session only after the store committed it.

A batch's runs are applied side by side, each run's commands in the order
sent: consecutive step records of one run together when the store commits
writes in the order submitted (SQLite's group commit: they share a commit),
else one by one (PostgreSQL), so the run's journal and history keep the
worker's order; any other command only after everything sent before it. A
run's commands other than step records wait for those of the run from earlier
batches, and later ones wait for them (``command_order.py``), so the order
holds across messages too: a worker may send a run's end right behind step
records it has no answer for yet. Such an end (``if_steps_recorded``) is
refused, and the run released to be replayed from its journal, when one of
those records was answered DUPLICATE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from stepd.server.config import ServerConfig
from stepd.server.domain import (
    ErrorDetails,
    FailureReason,
    RecordStepStatus,
    RunRecord,
    StepRow,
    SuspendStatus,
    run_fields,
)
from stepd.server.engine.children import ChildRuns
from stepd.server.engine.command_order import Turn
from stepd.server.engine.commands import (
    AcquireRate,
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
from stepd.server.engine.errors import EngineError, InvalidArgument
from stepd.server.engine.faults import FaultPolicy, describe
from stepd.server.engine.ledger import LeaseLedger
from stepd.server.engine.lifecycle import RunLifecycle
from stepd.server.engine.payloads import check_json_payload
from stepd.server.engine.rate_limits import RateLimits
from stepd.server.engine.run_limits import RunLimits, step_bytes
from stepd.server.engine.run_policy import RunPolicy
from stepd.server.engine.sessions import WorkerSession
from stepd.server.engine.sticky import StickyRuns
from stepd.server.engine.timers import TimerSchedule
from stepd.server.engine.validation import check_waits, shown
from stepd.server.store.base import Store

log = logging.getLogger("stepd.engine")

#: The most commands started together: each checks its payload before its first
#: wait, so a whole batch started at once would hold the event loop that long.
_SIDE_BY_SIDE = 32


class WorkerCommands:
    """Applies workers' commands through the ledger, the lifecycle and the helpers."""

    def __init__(
        self,
        store: Store,
        config: ServerConfig,
        ledger: LeaseLedger,
        lifecycle: RunLifecycle,
        limits: RunLimits,
        policy: RunPolicy,
        children: ChildRuns,
        sticky: StickyRuns,
        timers: TimerSchedule,
        faults: FaultPolicy,
        *,
        rates: RateLimits,
    ) -> None:
        self._store = store
        self._rates = rates
        self._faults = faults
        self._max_payload = config.max_payload_bytes
        self._ledger = ledger
        self._lifecycle = lifecycle
        self._limits = limits
        self._policy = policy
        self._children = children
        self._sticky = sticky
        self._timers = timers
        self._step_listeners: list[Callable[[StepRow], None]] = []

    def on_step(self, listener: Callable[[StepRow], None]) -> None:
        """Tell ``listener`` of every step outcome or failed attempt recorded here."""
        self._step_listeners.append(listener)

    # -- a batch -----------------------------------------------------------------

    async def apply_batch(self, session: WorkerSession, commands: Sequence[Command]) -> None:
        """Apply a batch and send each result to the worker: runs side by side,
        each run's commands in the order sent, after those of the run that
        earlier batches sent."""
        by_run: dict[str, list[Command]] = {}
        for command in commands:
            by_run.setdefault(command.run_id, []).append(command)
        # Each run takes its turn now, before anything is awaited: batches begin
        # in the order they arrived, so a later one's commands wait for these.
        turns = [
            (run_commands, Turn(session.applying, run_id, _records_only(run_commands)))
            for run_id, run_commands in by_run.items()
        ]
        try:
            if len(turns) == 1:
                await self._apply_turn(session, *turns[0])
                return
            for start in range(0, len(turns), _SIDE_BY_SIDE):
                await asyncio.gather(
                    *(self._apply_turn(session, *t) for t in turns[start : start + _SIDE_BY_SIDE])
                )
        finally:
            for _, turn in turns:  # also those a failure or a cancellation left unapplied
                turn.end()

    async def _apply_turn(
        self, session: WorkerSession, commands: list[Command], turn: Turn
    ) -> None:
        try:
            await turn.wait()
            await self._apply_in_order(session, commands)
        finally:
            turn.end()

    async def _apply_in_order(self, session: WorkerSession, commands: Sequence[Command]) -> None:
        """Apply one run's commands: consecutive step records together (they
        share a commit), anything else only after everything sent before it."""
        records: list[Command] = []
        for command in commands:
            if isinstance(command.action, RecordStep):
                records.append(command)
                continue
            await self._apply_records(session, records)
            records = []
            session.send(await self.apply(session, command))
        await self._apply_records(session, records)

    async def _apply_records(self, session: WorkerSession, commands: list[Command]) -> None:
        """Apply consecutive step records of one run: together where the store
        commits them in submission order, else one by one."""
        if len(commands) > 1 and self._store.ordered_writes:
            for start in range(0, len(commands), _SIDE_BY_SIDE):
                chunk = commands[start : start + _SIDE_BY_SIDE]
                results = await asyncio.gather(*(self.apply(session, c) for c in chunk))
                for result in results:
                    session.send(result)
        else:
            for command in commands:
                session.send(await self.apply(session, command))

    # -- one command ---------------------------------------------------------------

    async def apply(self, session: WorkerSession, command: Command) -> CommandResult:
        """Apply one command and return its result (after commit). A command that
        can never be recorded fails its run; one that failed inside the server
        hands the run out again after a growing delay, and fails it after a few
        such faults (``faults.py``)."""
        try:
            return await self._apply(session, command)
        except EngineError as exc:
            action = command.action
            # A bad event entry is refused alone; a malformed command fails its
            # run only when the worker cannot go on without it.
            if not isinstance(action, RecordEvent) and (
                not isinstance(action, Malformed) or action.fails_run
            ):
                await self._fail_invalid(session, command, str(exc))
            return CommandResult(command.command_id, CommandStatus.INVALID, str(exc))
        except Exception as exc:
            if self._ledger.holds(session, command.run_id, command.lease_id):
                await self._faults.command_failed(session, command.run_id, command.lease_id, exc)
            else:
                log.warning(
                    "command %d for run %s failed: %s",
                    command.command_id,
                    command.run_id,
                    describe(exc),
                    extra=run_fields(command.run_id, lease=command.lease_id),
                )
            return CommandResult(
                command.command_id,
                CommandStatus.INTERNAL_ERROR,
                "the server could not record the command; the run will be retried",
            )

    async def _apply(self, session: WorkerSession, command: Command) -> CommandResult:
        action = command.action
        if action is None:
            return CommandResult(command.command_id, CommandStatus.INVALID, "command has no action")
        if not self._ledger.holds(session, command.run_id, command.lease_id):
            return self._ledger.lease_lost(command.command_id, command.run_id)
        match action:
            case Malformed():
                raise InvalidArgument(action.reason)
            case RecordStep():
                return await self._apply_record_step(session, command, action)
            case SuspendRun():
                return await self._apply_suspend_run(session, command, action)
            case CompleteRun():
                return await self._apply_complete_run(session, command, action)
            case FailRun():
                return await self._apply_fail_run(session, command, action)
            case ReleaseRun():
                return await self._apply_release_run(session, command)
            case RecordEvent():
                return await self._apply_record_event(session, command, action)
            case StartStep():
                return self._apply_start_step(command, action)
            case AcquireRate():
                return await self._rates.acquire(command.command_id, command.run_id, action)
            case StartChild():
                return await self._apply_start_child(session, command, action)
            case HoldRun():
                return await self._apply_hold_run(session, command, action)
        raise InvalidArgument(f"unknown command {type(action).__name__}")

    async def _apply_record_step(
        self, session: WorkerSession, command: Command, action: RecordStep
    ) -> CommandResult:
        cid, run_id, lease_id = command.command_id, command.run_id, command.lease_id
        step = action.step
        if not step.step_key:
            raise InvalidArgument("record_step.step.step_key is required")
        if self._limits.full(run_id):
            return await self._policy.journal_full(session, cid, run_id, lease_id, step.step_key)
        if action.result is not None:
            result_json = check_json_payload(
                "record_step.step.result",
                action.result.json,
                action.result.encoding,
                self._max_payload,
            )
            step = replace(step, result_json=result_json)
        error = step.error
        size = step_bytes(
            step.result_json,
            error.message if error is not None else "",
            error.traceback if error is not None else "",
        )
        if not self._limits.fits(run_id, size):
            return await self._policy.journal_too_large(
                session, cid, run_id, lease_id, step.step_key
            )
        outcome = await self._store.record_step(run_id, lease_id, step)
        if outcome.status is RecordStepStatus.LEASE_LOST:
            return self._ledger.lease_lost(cid, run_id, session)
        self._limits.attempt_ended(run_id, step.step_key)
        if outcome.status is RecordStepStatus.DUPLICATE:
            session.duplicate_records[run_id] = lease_id
            return CommandResult(cid, CommandStatus.DUPLICATE, "", outcome.existing)
        self._limits.added(run_id, size=size)
        for listener in self._step_listeners:
            listener(step)
        return CommandResult(cid, CommandStatus.OK)

    async def _apply_suspend_run(
        self, session: WorkerSession, command: Command, action: SuspendRun
    ) -> CommandResult:
        cid, run_id, lease_id = command.command_id, command.run_id, command.lease_id
        check_waits(action.waits)
        if self._limits.full(run_id):  # waking would add an entry it has no room for
            return await self._policy.journal_full(session, cid, run_id, lease_id, "")
        outcome = await self._store.suspend_run(run_id, lease_id, action.waits)
        if outcome.status is SuspendStatus.LEASE_LOST:
            return self._ledger.lease_lost(cid, run_id, session)
        entries = self._limits.entries(run_id)
        self._ledger.let_go(session, run_id)
        if entries is not None:  # the worker may keep it live: offer it there first
            self._sticky.remember(session, run_id, lease_id, entries, self._limits.size(run_id))
        if outcome.status is SuspendStatus.WOKEN and outcome.run is not None:
            self._lifecycle.make_ready(outcome.run)
        for timer in outcome.timers:
            self._timers.schedule(timer)
        return CommandResult(cid, CommandStatus.OK)

    async def _apply_complete_run(
        self, session: WorkerSession, command: Command, action: CompleteRun
    ) -> CommandResult:
        result_json = check_json_payload(
            "complete_run.result", action.result.json, action.result.encoding, self._max_payload
        )
        if action.if_steps_recorded and self._went_on_without_a_record(session, command):
            return await self._replay_elsewhere(session, command)
        run = await self._lifecycle.complete(session, command.run_id, command.lease_id, result_json)
        return self._answer(session, command, run)

    async def _apply_fail_run(
        self, session: WorkerSession, command: Command, action: FailRun
    ) -> CommandResult:
        if action.if_steps_recorded and self._went_on_without_a_record(session, command):
            return await self._replay_elsewhere(session, command)
        run = await self._lifecycle.fail(session, command.run_id, command.lease_id, action.error)
        return self._answer(session, command, run)

    @staticmethod
    def _went_on_without_a_record(session: WorkerSession, command: Command) -> bool:
        """Whether a step record of the run, under this lease, was answered DUPLICATE:
        the workflow may have gone on with an outcome that is not the stored one."""
        return session.duplicate_records.get(command.run_id) == command.lease_id

    async def _replay_elsewhere(self, session: WorkerSession, command: Command) -> CommandResult:
        """Refuse an end that relied on a step outcome the store does not hold:
        release the run (a worker replays it from its journal) and answer LEASE_LOST."""
        if await self._lifecycle.release(session, command.run_id, command.lease_id) is None:
            return self._ledger.lease_lost(command.command_id, command.run_id, session)
        return CommandResult(
            command.command_id,
            CommandStatus.LEASE_LOST,
            f"run {shown(command.run_id)}: a step record it went on from was answered DUPLICATE; "
            "the run was released to be replayed from its journal",
        )

    async def _apply_release_run(self, session: WorkerSession, command: Command) -> CommandResult:
        run = await self._lifecycle.release(session, command.run_id, command.lease_id)
        return self._answer(session, command, run)

    async def _apply_record_event(
        self, session: WorkerSession, command: Command, action: RecordEvent
    ) -> CommandResult:
        if not action.entry_key or not action.name:
            raise InvalidArgument("record_event needs an entry_key and a name")
        payload = check_json_payload(
            "record_event.payload", action.payload.json, action.payload.encoding, self._max_payload
        )
        if not await self._store.record_event(
            command.run_id,
            command.lease_id,
            action.entry_key,
            action.name,
            payload,
            progress=action.progress,
        ):
            return self._ledger.lease_lost(command.command_id, command.run_id, session)
        return CommandResult(command.command_id, CommandStatus.OK)

    def _apply_start_step(self, command: Command, action: StartStep) -> CommandResult:
        return self._policy.start_step(command.command_id, command.run_id, command.lease_id, action)

    async def _apply_start_child(
        self, session: WorkerSession, command: Command, action: StartChild
    ) -> CommandResult:
        return await self._children.start(
            session, command.command_id, command.run_id, command.lease_id, action
        )

    async def _apply_hold_run(
        self, session: WorkerSession, command: Command, action: HoldRun
    ) -> CommandResult:
        return await self._children.hold(
            session, command.command_id, command.run_id, command.lease_id, action
        )

    def _answer(
        self, session: WorkerSession, command: Command, run: RunRecord | None
    ) -> CommandResult:
        """OK when the run moved; else its lease was gone."""
        if run is None:
            return self._ledger.lease_lost(command.command_id, command.run_id, session)
        return CommandResult(command.command_id, CommandStatus.OK)

    # -- when a command cannot be applied ---------------------------------------------

    async def _fail_invalid(self, session: WorkerSession, command: Command, reason: str) -> None:
        """A run whose worker sent a command that can never be recorded (e.g. a
        result over the payload limit) would fail the same way on every retry:
        fail it with the reason, and tell the worker to stop it."""
        step_key = command.action.step.step_key if isinstance(command.action, RecordStep) else ""
        error = ErrorDetails("stepd.InvalidCommand", reason, step_key=step_key)
        if await self._lifecycle.fail_held(
            session, command.run_id, command.lease_id, error, FailureReason.WORKFLOW_ERROR
        ):
            log.warning(
                "run %s failed: its worker sent an invalid command: %s",
                command.run_id,
                reason,
                extra=run_fields(command.run_id, lease=command.lease_id),
            )


def _records_only(commands: list[Command]) -> bool:
    return all(isinstance(command.action, RecordStep) for command in commands)
