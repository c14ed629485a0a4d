"""``SqlStore``: the ``Store`` interface on SQLAlchemy Core, for SQLite and PostgreSQL.

Every method is a synchronous *operation* on a ``Connection`` handed to an
executor (``stepd.server.store.executor``): writes to a ``Committer``, reads to a
``Reader``. The statements are the same on both databases; only the executor
differs. On SQLite writes go to the group committer (one writer connection on
its own thread, many operations per transaction) and reads to a small thread
pool of WAL readers; on PostgreSQL each write is its own transaction on a
pooled asyncpg connection (``stepd.server.store.postgres``). Each write is
answered only after its commit; the public methods are async and never block
the event loop.

Every write on the hot path (create, claim, record step, transition) is one
indexed statement in the common case, with ``RETURNING`` instead of a second
read; none of them reads a run's journal, except ``claim_run`` of a run that
was dispatched before, which must hand the journal to the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    Table,
    Text,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql import Select

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain import (
    ClaimedRun,
    ClaimRequest,
    CreateRunOutcome,
    DueTimer,
    ErrorDetails,
    FailureReason,
    HistoryCursor,
    HistoryEntry,
    HistoryPage,
    HistoryType,
    HookOutcome,
    NewRun,
    PendingWaitRow,
    PublishOutcome,
    RecordStepOutcome,
    RecordStepStatus,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalOutcome,
    StatusMove,
    StepRow,
    SuspendOutcome,
    WaitSpec,
    WorkflowVersion,
)
from stepd.server.store import (
    children,
    concurrency,
    debounce,
    flow,
    history,
    listing,
    rate_limits,
    ready,
    rows,
    schedules,
    versions,
    waits,
)
from stepd.server.store.api_keys import KeyStoreMixin
from stepd.server.store.base import ConcurrencyRefusedError, RunConflictError
from stepd.server.store.dialects import insert_for
from stepd.server.store.direct import Direct
from stepd.server.store.executor import CommitStats, Committer, Reader, WriteOp
from stepd.server.store.flow_overview import FlowOverviewMixin
from stepd.server.store.migrations import migrate
from stepd.server.store.run_actions import RunActionStoreMixin
from stepd.server.store.schema import runs, server_secrets, step_attempts, steps, workflow_versions
from stepd.server.store.workers import WorkerStoreMixin

T = TypeVar("T")

if TYPE_CHECKING:
    from stepd.server.store.base import Store

_PENDING = RunStatus.PENDING.value
_RUNNING = RunStatus.RUNNING.value
_STEP_PARAMS = (
    ("step_key", Text),
    ("attempt", Integer),
    ("result_json", Text),
    ("error_type", Text),
    ("error_message", Text),
    ("error_traceback", Text),
    ("error_step_key", Text),
    ("error_attempt", Integer),
    ("start_time", BigInteger),
    ("end_time", BigInteger),
    ("record_time", BigInteger),
)
# A failed attempt that is not the step's outcome has no result.
_ATTEMPT_PARAMS = tuple(param for param in _STEP_PARAMS if param[0] != "result_json")


def _leased_insert(insert: Any, table: Table, params: tuple[tuple[str, Any], ...]) -> Any:
    """INSERT INTO table SELECT <params> FROM runs WHERE <the lease holds> ON CONFLICT
    DO NOTHING RETURNING sequence: one statement for the common case. The lease row
    is read FOR SHARE (PostgreSQL), so a concurrent release of the lease waits for it."""
    leased_values = (
        select(
            runs.c.run_id,
            *(bindparam(f"p_{name}", type_=type_) for name, type_ in params),
            runs.c.lease_id,
        )
        .where(
            runs.c.run_id == bindparam("p_run_id"),
            runs.c.status == _RUNNING,
            runs.c.lease_id == bindparam("p_lease_id"),
        )
        .with_for_update(read=True)
    )
    return (
        insert(table)
        .from_select(["run_id", *(name for name, _ in params), "lease_id"], leased_values)
        .on_conflict_do_nothing()
        .returning(table.c.sequence)
    )


class SqlStore(
    schedules.ScheduleStoreMixin,
    KeyStoreMixin,
    versions.VersionStoreMixin,
    concurrency.ConcurrencyStoreMixin,
    flow.FlowStoreMixin,
    rate_limits.RateStoreMixin,
    FlowOverviewMixin,
    RunActionStoreMixin,
    WorkerStoreMixin,
):
    """A ``Store`` whose writes run on ``committer`` and reads on ``reads``.

    The store owns both executors (and through them the engines) and closes
    them on ``close``. ``migrate`` is the write that brings the schema up to
    date when the store opens. ``clock`` gives the times it records and compares
    (the engine's clock). Use ``open_store`` to build one for a path or URL.
    """

    def __init__(
        self,
        committer: Committer,
        reads: Reader,
        *,
        migrate: WriteOp[list[int]] = migrate,
        on_close: Callable[[], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self._committer = committer
        self._on_close = on_close
        self._reads = reads
        self._migrate = migrate
        self._opened = False
        insert = insert_for(committer.engine.dialect.name)

        self._insert_run = Direct(insert(runs).on_conflict_do_nothing().returning(*runs.c))
        # The claim of one known run waits for a transaction holding its row (a
        # replica claiming it too, a signal, a late step record) and then
        # re-checks the guard: skipping a locked row here would drop a run that
        # is ready. Finding ready runs (``ready.ready_runs``) skips locked rows.
        unclaimed = runs.c.run_id == bindparam("p_run_id")
        self._claim = Direct(
            update(runs)
            .where(
                unclaimed,
                runs.c.status == _PENDING,
                # A run waiting for room under its concurrency limit is never handed out.
                or_(runs.c.admitted.is_(None), runs.c.admitted == 1),
                # A delayed start is never handed out early.
                or_(
                    runs.c.start_time_not_before.is_(None),
                    runs.c.start_time_not_before <= bindparam("p_now"),
                ),
            )
            .values(
                status=_RUNNING,
                dispatch_count=runs.c.dispatch_count + 1,
                lease_id=runs.c.dispatch_count + 1,
                lease_owner=bindparam("p_owner"),
                # A run triggered before any worker registered its workflow
                # has version "": the first claim pins it to the worker's.
                workflow_version=func.coalesce(
                    func.nullif(runs.c.workflow_version, ""), bindparam("p_version")
                ),
                lease_expires_at=bindparam("p_expires"),
                start_time=func.coalesce(runs.c.start_time, bindparam("p_now")),
                # The first claim starts the execution timeout (if the workflow has one).
                execution_deadline=func.coalesce(
                    runs.c.execution_deadline, bindparam("p_execution_deadline", type_=BigInteger)
                ),
                expire_time=_earliest(
                    runs.c.deadline,
                    func.coalesce(
                        runs.c.execution_deadline,
                        bindparam("p_execution_deadline", type_=BigInteger),
                    ),
                ),
                update_time=bindparam("p_now"),
                # A worker takes a held run: it is no longer held (unless it holds it).
                held_error_type=None,
                held_error_message=None,
            )
            .returning(*runs.c)
        )
        self._insert_step = Direct(_leased_insert(insert, steps, _STEP_PARAMS))
        self._insert_attempt = Direct(_leased_insert(insert, step_attempts, _ATTEMPT_PARAMS))
        self._insert_versions = insert(workflow_versions).on_conflict_do_nothing()
        self._get_run = Direct(select(runs).where(runs.c.run_id == bindparam("p_run_id")))
        self._transitions: dict[tuple[tuple[str, ...], int, bool], Direct] = {}
        self._history_listener: Callable[[str], None] | None = None
        self._key_listener: Callable[[str, str, concurrency.KeyCheck], None] | None = None

    @property
    def committer(self) -> Committer:
        """The write executor (on SQLite the ``GroupCommitter``, with its counters)."""
        return self._committer

    @property
    def ordered_writes(self) -> bool:
        """True when writes about one run commit in the order submitted."""
        return self._committer.ordered

    @property
    def commit_stats(self) -> CommitStats:
        """Counters of the commits and writes made so far."""
        return self._committer.stats

    @property
    def writer_engine(self) -> Engine:
        """The engine all writes go through (its synchronous view on PostgreSQL)."""
        return self._committer.engine

    @property
    def reader_engine(self) -> Engine:
        """The engine reads go through."""
        return self._reads.engine

    def on_history(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(run_id)`` after each write that may have added to a run's
        history has committed (also when it turned out to change nothing)."""
        self._history_listener = listener

    def on_key_checked(self, listener: Callable[[str, str, concurrency.KeyCheck], None]) -> None:
        """Call ``listener(limit_name, key, check)`` after a run under a concurrency
        limit ended: its key was checked in the same transaction."""
        self._key_listener = listener

    async def _write_for(self, run_id: str | None, op: WriteOp[T]) -> T:
        """Run a write about ``run_id`` and tell the history listener once it committed."""
        result = await self._committer.submit(op, run_id)
        if run_id is not None and self._history_listener is not None:
            self._history_listener(run_id)
        return result

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Apply pending migrations and start the writer."""
        if self._opened:
            raise RuntimeError("the store is already open")
        await self._committer.start()
        self._opened = True
        await self._committer.submit(self._migrate)

    async def close(self) -> None:
        """Finish queued writes, then release every connection."""
        try:
            await self._committer.close()
            await self._reads.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    # -- writes -----------------------------------------------------------

    async def create_run(self, new: NewRun, claim: ClaimRequest | None = None) -> CreateRunOutcome:
        """Insert a PENDING run, or return the run that already has its idempotency
        key; with ``claim``, claim a new run that may start at once in the same
        transaction."""

        def existing_run(conn: Connection) -> CreateRunOutcome | None:
            if new.idempotency_key is None:
                return None
            existing = _first(
                conn, select(runs).where(runs.c.idempotency_key == new.idempotency_key)
            )
            if existing is None:
                return None
            return CreateRunOutcome(rows.run_from_row(existing), created=False)

        def op(conn: Connection) -> CreateRunOutcome | RunConflictError | ConcurrencyRefusedError:
            values = rows.new_run_values(new)
            settings = flow.apply_new(conn, values, new.priority)
            if settings is not None and settings.debounce is not None:
                found = existing_run(conn)  # the idempotency key's run wins
                if found is not None:
                    return found
                folded = debounce.fold(conn, values, settings.debounce, new.debounce_key)
                if folded is not None:
                    return CreateRunOutcome(folded, created=False, debounced=True)
            refusal = concurrency.admit_new(conn, values, new.concurrency_key)
            if refusal is not None:
                return existing_run(conn) or ConcurrencyRefusedError(refusal.message())
            inserted = self._insert_run.first(conn, values)
            if inserted is not None:
                run = rows.run_from_row(inserted)
                if claim is None or not _starts_at_once(run):
                    return CreateRunOutcome(run, created=True)
                claimed = self._claim_in(
                    conn,
                    run.run_id,
                    claim.owner,
                    claim.lease_expires_at,
                    claim.version,
                    claim.execution_timeout_ms,
                )
                return CreateRunOutcome(claimed.run if claimed else run, True, claimed=claimed)
            # Returned, not raised: raising would roll back the whole batch.
            return existing_run(conn) or RunConflictError(new.run_id)

        outcome = await self._write_for(new.run_id, op)
        if isinstance(outcome, (RunConflictError, ConcurrencyRefusedError)):
            raise outcome
        return outcome

    async def claim_run(
        self,
        run_id: str,
        owner: str,
        lease_expires_at: int,
        version: str = "",
        execution_timeout_ms: int | None = None,
        continues_lease: int = 0,
        known_entries: int = 0,
    ) -> ClaimedRun | None:
        """Move a PENDING run to RUNNING under a new lease; None when it is not PENDING.

        The first claim starts the run: ``execution_timeout_ms`` (if any) sets its
        execution deadline, and its expiry becomes the earlier of that and the
        deadline."""

        def op(conn: Connection) -> ClaimedRun | None:
            return self._claim_in(
                conn,
                run_id,
                owner,
                lease_expires_at,
                version,
                execution_timeout_ms,
                continues_lease,
                known_entries,
            )

        return await self._write_for(run_id, op)

    def _claim_in(
        self,
        conn: Connection,
        run_id: str,
        owner: str,
        lease_expires_at: int,
        version: str,
        execution_timeout_ms: int | None,
        continues_lease: int = 0,
        known_entries: int = 0,
    ) -> ClaimedRun | None:
        """``claim_run``'s statements, in the caller's transaction."""
        now = self._clock.now_ms()
        params = {
            "p_execution_deadline": (
                None if execution_timeout_ms is None else now + execution_timeout_ms
            ),
            "p_version": version,
            "p_run_id": run_id,
            "p_owner": owner,
            "p_expires": lease_expires_at,
            "p_now": now,
        }
        row = self._claim.first(conn, params)
        if row is None:
            return None
        run = rows.run_from_row(row)
        continuation = continues_lease > 0 and run.lease_id == continues_lease + 1
        history.add(
            conn,
            run_id,
            HistoryType.DISPATCHED,
            now,
            attempt=run.lease_id,
            detail=f"{owner} (continuation)" if continuation else owner,
        )
        if run.dispatch_count == 1:  # first dispatch: no journal yet
            return ClaimedRun(run)
        if continuation:  # only what the worker has not seen
            delta = waits.ordered_journal(conn, run_id, continues_lease, known_entries)
            return ClaimedRun(run, *delta, continues_lease=continues_lease)
        return ClaimedRun(run, *waits.ordered_journal(conn, run_id))

    async def record_step(self, run_id: str, lease_id: int, step: StepRow) -> RecordStepOutcome:
        """Record a step outcome once per key (a failed attempt, ``attempt_only``, once
        per key and attempt), only under the run's current lease."""
        values = rows.step_values(run_id, step, self._clock.now_ms())
        if step.attempt_only:
            del values["result_json"]
            table, statement = step_attempts, self._insert_attempt
            read_back = rows.attempt_from_row
        else:
            table, statement = steps, self._insert_step
            read_back = rows.step_from_row
        params = {f"p_{k}": v for k, v in values.items()}
        params["p_lease_id"] = lease_id

        def op(conn: Connection) -> RecordStepOutcome:
            inserted = statement.first(conn, params)
            if inserted is not None:
                return RecordStepOutcome(RecordStepStatus.RECORDED)
            # Nothing inserted: the lease is gone, or the key was recorded before.
            lease = conn.execute(
                select(runs.c.status, runs.c.lease_id).where(runs.c.run_id == run_id)
            ).first()
            if lease is None or lease.status != _RUNNING or lease.lease_id != lease_id:
                return RecordStepOutcome(RecordStepStatus.LEASE_LOST)
            query = select(table).where(table.c.run_id == run_id, table.c.step_key == step.step_key)
            if step.attempt_only:
                query = query.where(step_attempts.c.attempt == step.attempt)
            existing = _first(conn, query)
            if existing is None:
                raise RuntimeError(f"step {step.step_key!r} of run {run_id!r} was not inserted")
            return RecordStepOutcome(RecordStepStatus.DUPLICATE, read_back(existing))

        return await self._write_for(run_id, op)

    async def release_run(self, run_id: str, move: StatusMove, lease_id: int) -> RunRecord | None:
        """Give a run held under ``lease_id`` back to the queue; None when the guard
        did not match."""
        return await self._move(run_id, move, RunStatus.PENDING, lease_id, {"lease_owner": None})

    async def complete_run(
        self, run_id: str, move: StatusMove, lease_id: int, result_json: str
    ) -> RunRecord | None:
        """End a run held under ``lease_id`` with its result; None when the guard
        did not match."""
        columns = {"result_json": result_json, "lease_owner": None}
        return await self._move(run_id, move, RunStatus.COMPLETED, lease_id, columns)

    async def fail_run(
        self,
        run_id: str,
        move: StatusMove,
        error: ErrorDetails,
        reason: FailureReason,
        *,
        lease_id: int | None = None,
    ) -> RunRecord | None:
        """End a run with an error (under ``lease_id`` when given); None when the
        guard did not match."""
        columns = {
            **rows.error_columns(error),
            "failure_reason": reason.value,
            "lease_owner": None,
        }
        return await self._move(run_id, move, RunStatus.FAILED, lease_id, columns)

    async def cancel_run(
        self, run_id: str, move: StatusMove, reason: str, *, actor: str = ""
    ) -> RunRecord | None:
        """Cancel an unfinished run with ``reason`` (``actor``, an API key id, goes on
        its history entry); None when the guard did not match."""
        columns = {"cancel_reason": reason, "lease_owner": None}
        return await self._move(run_id, move, RunStatus.CANCELLED, None, columns, actor)

    async def _move(
        self,
        run_id: str,
        move: StatusMove,
        target: RunStatus,
        lease_id: int | None,
        values: Mapping[str, object],
        actor: str = "",
    ) -> RunRecord | None:
        """Apply ``move`` (which must lead to ``target``) with ``values`` when the
        run is in one of its sources (and holds ``lease_id``); else None."""
        if move.target is not target:
            raise ValueError(f"this write moves runs to {target.value}, not to {move.target.value}")
        sources = sorted(status.value for status in move.sources)
        if not sources:
            return None
        now = self._clock.now_ms()
        columns = {**values, "status": target.value, "update_time": now}
        if target.is_terminal:
            columns["end_time"] = now
        stmt = self._transition_statement(
            tuple(sorted(columns)), len(sources), lease_id is not None
        )
        params = {f"v_{name}": value for name, value in columns.items()}
        params.update({f"p_source_{i}": source for i, source in enumerate(sources)})
        params.update(p_run_id=run_id, p_lease_id=lease_id)

        # A run that ends under a concurrency limit admits what waits at its key
        # in the same transaction (no write of its own, no wait for it).
        checked: list[concurrency.KeyCheck] = []

        def op(conn: Connection) -> RunRecord | None:
            checked.clear()  # a batch retried one write at a time runs it again
            row = stmt.first(conn, params)
            if row is None:
                return None
            run = rows.run_from_row(row)
            if target.is_terminal and run.concurrency_name and run.concurrency_key is not None:
                checked.append(
                    concurrency.check_key(conn, run.concurrency_name, run.concurrency_key, now)
                )
            if target is RunStatus.PENDING:
                history.add(conn, run_id, HistoryType.RELEASED, now)
            elif target is RunStatus.CANCELLED:
                history.add(
                    conn,
                    run_id,
                    HistoryType.CANCELLED,
                    now,
                    detail=run.cancel_reason,
                    actor=actor or None,
                )
            return run

        moved = await self._write_for(run_id, op)
        if moved is not None and checked and self._key_listener is not None:
            name, key = moved.concurrency_name or "", moved.concurrency_key or ""
            self._key_listener(name, key, checked[0])
        return moved

    def _transition_statement(
        self, columns: tuple[str, ...], sources: int, with_lease: bool
    ) -> Direct:
        """Build (once per shape) the guarded UPDATE ... RETURNING of ``_move``: the
        source statuses are bound one by one (``p_source_N``), not as a list
        expanded at run time, so it compiles once."""
        key = (columns, sources, with_lease)
        direct = self._transitions.get(key)
        if direct is None:
            stmt = update(runs).where(
                runs.c.run_id == bindparam("p_run_id"),
                runs.c.status.in_([bindparam(f"p_source_{i}") for i in range(sources)]),
            )
            if with_lease:
                stmt = stmt.where(runs.c.lease_id == bindparam("p_lease_id"))
            stmt = stmt.values({name: bindparam(f"v_{name}") for name in columns})
            direct = self._transitions[key] = Direct(stmt.returning(*runs.c))
        return direct

    async def register_workflows(self, versions: Iterable[tuple[str, str]]) -> None:
        """Remember (name, version) pairs; pairs already known keep their first_seen."""
        now = self._clock.now_ms()
        params = [
            {"name": name, "version": version, "first_seen": now}
            for name, version in sorted(set(versions))
        ]
        if not params:
            return

        def op(conn: Connection) -> None:
            conn.execute(self._insert_versions, params)

        await self._committer.submit(op)

    async def suspend_run(
        self, run_id: str, lease_id: int, wait_specs: Sequence[WaitSpec]
    ) -> SuspendOutcome:
        """Suspend a RUNNING run under its lease until one of its waits is met."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> SuspendOutcome:
            return waits.suspend(conn, run_id, lease_id, wait_specs, now)

        return await self._write_for(run_id, op)

    async def fire_timer(self, run_id: str, wait_key: str) -> RunRecord | None:
        """Mark an open timer met; return the run when that woke it."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> RunRecord | None:
            return waits.fire_timer(conn, run_id, wait_key, now)

        return await self._write_for(run_id, op)

    async def fire_timer_early(self, run_id: str, wait_key: str) -> tuple[bool, RunRecord | None]:
        """Meet an open timer before its time when it is its run's only open wait
        (met at its fire time): (whether it was met, the run when that woke it)."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> tuple[bool, RunRecord | None]:
            return waits.fire_timer_early(conn, run_id, wait_key, now)

        return await self._write_for(run_id, op)

    async def send_signal(
        self,
        run_id: str,
        name: str,
        payload_json: str,
        request_id: str | None,
        *,
        actor: str = "",
    ) -> SignalOutcome:
        """Buffer a signal for a run, or hand it to the run's open wait for it."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> SignalOutcome:
            return waits.send_signal(conn, run_id, name, payload_json, request_id, now, actor)

        return await self._write_for(run_id, op)

    async def execute_hook(
        self, run_id: str, wait_key: str, token_hash: str, payload_json: str, *, actor: str = ""
    ) -> HookOutcome:
        """Execute a hook once (deliver now, or keep until the run waits on it)."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> HookOutcome:
            return waits.execute_hook(conn, run_id, wait_key, token_hash, payload_json, now, actor)

        return await self._write_for(run_id, op)

    async def server_secret(self, name: str) -> bytes:
        """A per-database secret created by the migrations (e.g. "hook_key")."""
        value = await self._reads.run(
            lambda conn: conn.execute(
                select(server_secrets.c.value).where(server_secrets.c.name == name)
            ).scalar_one()
        )
        return bytes.fromhex(value)

    async def publish_event(
        self,
        event_id: str,
        name: str,
        payload_json: str,
        *,
        actor: str = "",
        current_versions: Mapping[str, str] | None = None,
    ) -> PublishOutcome:
        """Store an event, wake the runs waiting for it and start the workflows it
        triggers."""
        now = self._clock.now_ms()
        current = dict(current_versions or {})

        def op(conn: Connection) -> PublishOutcome:
            outcome = waits.publish_event(conn, event_id, name, payload_json, now, actor)
            if outcome.already_published:
                return outcome
            started = schedules.start_subscribed(conn, event_id, name, payload_json, now, current)
            return replace(outcome, started=started)

        outcome = await self._committer.submit(op)
        if self._history_listener is not None:
            for run in outcome.woken:
                self._history_listener(run.run_id)
        return outcome

    async def record_event(
        self,
        run_id: str,
        lease_id: int,
        key: str,
        name: str,
        payload_json: str,
        *,
        progress: bool = False,
    ) -> bool:
        """Append a custom history entry once per key, under the run's lease; a
        ``progress`` entry that is new also becomes the run's progress."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> bool:
            holds = conn.execute(
                select(runs.c.run_id)
                .where(
                    runs.c.run_id == run_id,
                    runs.c.status == _RUNNING,
                    runs.c.lease_id == lease_id,
                )
                # PostgreSQL: a concurrent release waits (and progress, which
                # updates the row, takes the row's write lock at once).
                .with_for_update(read=not progress)
            ).first()
            if holds is None:
                return False
            kind = HistoryType.PROGRESS if progress else HistoryType.CUSTOM
            added = history.add_custom(conn, run_id, key, name, payload_json, now, kind)
            if added and progress:
                conn.execute(
                    update(runs).where(runs.c.run_id == run_id).values(progress_json=payload_json)
                )
            return True

        return await self._write_for(run_id, op)

    async def run_history(self, run_id: str) -> list[HistoryEntry] | None:
        """A run's whole history, oldest first; None for an unknown run."""
        return await self._reads.run(lambda conn: history.read(conn, run_id))

    async def run_history_page(
        self, run_id: str, cursor: HistoryCursor, limit: int, max_bytes: int
    ) -> HistoryPage | None:
        """A page of a run's history after ``cursor``; None for an unknown run."""
        return await self._reads.run(
            lambda conn: history.read_page(conn, run_id, cursor, limit, max_bytes)
        )

    async def abandon_waits(self, run_id: str) -> int:
        """Abandon a finished run's open waits so that none of them fires."""

        def op(conn: Connection) -> int:
            return waits.abandon_open(conn, run_id)

        return await self._committer.submit(op)

    async def pending_waits(self, run_id: str) -> list[PendingWaitRow]:
        """The open waits of a run, oldest first."""
        return await self._reads.run(lambda conn: waits.pending(conn, run_id))

    async def due_timers(self, until: int, limit: int) -> list[DueTimer]:
        """Open timers firing at or before ``until``, soonest first."""
        return await self._reads.run(lambda conn: waits.due_timers(conn, until, limit))

    async def extend_leases(self, owner: str, run_ids: Iterable[str], expires_at: int) -> int:
        """Push back the lease expiry of runs ``owner`` holds; return how many changed."""
        ids = sorted(set(run_ids))
        if not ids:
            return 0
        stmt = (
            update(runs)
            .where(
                runs.c.run_id.in_(ids),
                runs.c.status == _RUNNING,
                runs.c.lease_owner == owner,
            )
            .values(lease_expires_at=expires_at)
        )

        def op(conn: Connection) -> int:
            return int(conn.execute(stmt).rowcount)

        return await self._committer.submit(op)

    async def start_child(
        self, parent_run_id: str, lease_id: int, child_key: str, new: NewRun
    ) -> children.StartChildOutcome:
        """Create a child run once and record the parent's entry for the call."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> children.StartChildOutcome:
            return children.start(conn, parent_run_id, lease_id, child_key, new, now)

        return await self._write_for(parent_run_id, op)

    async def deliver_child(self, child: RunRecord) -> RunRecord | None:
        """Meet the parent's open wait on an ended child; return the parent if it woke."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> RunRecord | None:
            return children.deliver(conn, child, now)

        return await self._write_for(child.parent_run_id, op)

    async def hold_run(self, run_id: str, lease_id: int, error: ErrorDetails) -> RunRecord | None:
        """Give a run back as PENDING, held for non-determinism; None without the lease."""
        now = self._clock.now_ms()

        def op(conn: Connection) -> RunRecord | None:
            return children.hold(conn, run_id, lease_id, error, now)

        return await self._write_for(run_id, op)

    # -- reads ------------------------------------------------------------

    async def unfinished_children(self, parent_run_id: str) -> list[RunRecord]:
        """A run's unfinished children that do not outlive it."""
        return await self._reads.run(lambda conn: children.unfinished_children(conn, parent_run_id))

    async def child_recovery(self) -> tuple[list[RunRecord], list[str]]:
        """Ended children whose parent still waits on them; ended runs with unfinished
        attached children."""
        return await self._reads.run(children.recovery)

    async def ready_runs(self, served: Sequence[tuple[str, str]], limit: int) -> list[RunRecord]:
        """PENDING runs, due to start, of the served (workflow, version) pairs (a
        replica's poll); rows being claimed elsewhere are skipped."""
        now = self._clock.now_ms()
        return await self._committer.submit(lambda conn: ready.ready_runs(conn, served, limit, now))

    async def ended_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Those of ``run_ids`` that reached a terminal status."""
        return await self._reads.run(lambda conn: ready.ended_runs(conn, run_ids))

    async def expired_leases(self, now: int, limit: int) -> list[RunRecord]:
        """Return up to ``limit`` RUNNING runs whose lease expired before ``now``."""
        stmt = (
            select(runs)
            .where(runs.c.status == _RUNNING, runs.c.lease_expires_at < now)
            .order_by(runs.c.lease_expires_at)
            .limit(limit)
        )
        return await self._reads.run(_runs_reader(stmt))

    async def get_run(self, run_id: str) -> RunRecord | None:
        """Return one run, or None."""
        params = {"p_run_id": run_id}

        def read(conn: Connection) -> RunRecord | None:
            row = self._get_run.first(conn, params)
            return rows.run_from_row(row) if row is not None else None

        return await self._reads.run(read)

    async def list_runs(
        self, run_filter: RunFilter, limit: int, before_seq: int | None
    ) -> list[RunRecord]:
        """Return up to ``limit`` matching runs, newest first, with seq < before_seq."""
        if limit <= 0:
            return []
        stmt = select(runs)
        if run_filter.workflow_name is not None:
            stmt = stmt.where(runs.c.workflow_name == run_filter.workflow_name)
        if run_filter.statuses is not None:
            stmt = stmt.where(runs.c.status.in_(sorted(s.value for s in run_filter.statuses)))
        if run_filter.parent_run_id is not None:
            stmt = stmt.where(runs.c.parent_run_id == run_filter.parent_run_id)
        if run_filter.create_time_after is not None:
            stmt = stmt.where(runs.c.create_time >= run_filter.create_time_after)
        if run_filter.create_time_before is not None:
            stmt = stmt.where(runs.c.create_time < run_filter.create_time_before)
        if before_seq is not None:
            stmt = stmt.where(runs.c.seq < before_seq)
        return await self._reads.run(_runs_reader(stmt.order_by(runs.c.seq.desc()).limit(limit)))

    async def list_runs_page(
        self,
        run_filter: RunFilter,
        limit: int,
        before_seq: int | None,
        *,
        payloads: bool,
        max_bytes: int,
    ) -> tuple[list[RunRecord], bool]:
        """A page of matching runs, newest first, bounded in bytes (``listing.py``)."""
        return await self._reads.run(
            lambda conn: listing.read_page(conn, run_filter, limit, before_seq, payloads, max_bytes)
        )

    async def load_journal(self, run_id: str) -> list[StepRow]:
        """Return a run's recorded steps in recording order."""
        return await self._reads.run(lambda conn: _journal(conn, run_id))

    async def runs_in_status(self, statuses: Iterable[RunStatus]) -> list[RunRecord]:
        """Return every run in one of the statuses, oldest first."""
        values = sorted({RunStatus(s).value for s in statuses})
        if not values:
            return []
        stmt = select(runs).where(runs.c.status.in_(values)).order_by(runs.c.seq)
        return await self._reads.run(_runs_reader(stmt))

    async def check_storage(self) -> None:
        """Open a write transaction and end it, writing nothing (the health probe)."""

        def op(conn: Connection) -> None:
            conn.execute(select(1)).scalar()

        await self._committer.submit(op)

    async def workflow_versions(self) -> list[WorkflowVersion]:
        """Return every registered workflow version, oldest first."""
        t = workflow_versions
        stmt = select(t).order_by(t.c.first_seen, t.c.name, t.c.version)

        def read(conn: Connection) -> list[WorkflowVersion]:
            return [
                WorkflowVersion(
                    name=r["name"],
                    version=r["version"],
                    first_seen=r["first_seen"],
                    retire_time=r["retire_time"],
                )
                for r in conn.execute(stmt).mappings()
            ]

        return await self._reads.run(read)


def _earliest(first: Any, second: Any) -> Any:
    """The earlier of two nullable times (NULL only when both are)."""
    return case(
        (first.is_(None), second),
        (second.is_(None), first),
        (first < second, first),
        else_=second,
    )


def _runs_reader(stmt: Select[Any]) -> Callable[[Connection], list[RunRecord]]:
    def read(conn: Connection) -> list[RunRecord]:
        return [rows.run_from_row(row) for row in conn.execute(stmt).mappings()]

    return read


def _first(conn: Connection, stmt: Any) -> RowMapping | None:
    return conn.execute(stmt).mappings().first()


def _journal_query(run_id: str) -> Select[Any]:
    return select(steps).where(steps.c.run_id == run_id).order_by(steps.c.sequence)


def _journal(conn: Connection, run_id: str) -> list[StepRow]:
    return [rows.step_from_row(row) for row in conn.execute(_journal_query(run_id)).mappings()]


if TYPE_CHECKING:

    def _implements_store(store: SqlStore) -> Store:
        return store


def _starts_at_once(run: RunRecord) -> bool:
    """Whether a new run may go to a worker as it is created: nothing would hold
    it in the ready queues (a start time, a start rate limit, room under a
    concurrency limit) or rank it there (a priority, a fairness key)."""
    return (
        run.admitted
        and run.start_time_not_before is None
        and run.rate_limit is None
        and not run.priority
        and run.concurrency_key is None
    )
