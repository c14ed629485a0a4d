"""``SqlStore``: the ``Store`` interface on SQLAlchemy Core, for SQLite and PostgreSQL.

Writes are operations handed to the group committer (one writer connection
on its own thread, many operations per transaction); each is answered only
after its commit. Reads run on a small thread pool over a separate engine (on
SQLite, WAL readers that never block the writer). Statements are SQLAlchemy
Core, run synchronously on those store-owned threads; the public methods are
async and never block the event loop.

Every write on the hot path (create, claim, record step, transition) is one
indexed statement in the common case, with ``RETURNING`` instead of a second
read; none of them reads a run's journal, except ``claim_run`` of a run that
was dispatched before, which must hand the journal to the worker.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    Text,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql import Select, Update

from service.domain import (
    ClaimedRun,
    CreateRunOutcome,
    DueTimer,
    HistoryEntry,
    HistoryType,
    HookOutcome,
    NewRun,
    PublishOutcome,
    RecordStepOutcome,
    RecordStepStatus,
    RunFilter,
    RunRecord,
    RunStatus,
    SignalOutcome,
    StepRow,
    SuspendOutcome,
    WaitSpec,
    WorkflowVersion,
    now_ms,
)
from service.store import history, rows, waits
from service.store.base import RunConflictError
from service.store.dialects import insert_for
from service.store.group_commit import GroupCommitter
from service.store.migrations import migrate
from service.store.read_pool import ReadPool
from service.store.schema import runs, server_secrets, steps, workflow_versions

if TYPE_CHECKING:
    from service.store.base import Store

#: Columns ``transition_run`` may set through ``values``. Identity, status,
#: update_time and the lease counters are maintained by the store itself.
TRANSITION_COLUMNS = frozenset(
    {
        "result_json",
        "error_type",
        "error_message",
        "error_traceback",
        "error_step_key",
        "error_attempt",
        "failure_reason",
        "cancel_reason",
        "lease_owner",
        "lease_expires_at",
        "deadline",
        "start_time_not_before",
        "start_time",
        "end_time",
    }
)

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


class SqlStore:
    """A ``Store`` over a SQLAlchemy writer engine and reader engine.

    ``writer`` is used through one connection on the group committer's
    thread, at most ``max_batch`` writes per transaction; ``reader`` serves
    the read methods on ``readers`` threads. The store owns both engines and
    disposes of them on ``close``. Use ``open_store`` to build one for a path.
    """

    def __init__(
        self, writer: Engine, reader: Engine, *, readers: int = 4, max_batch: int = 500
    ) -> None:
        self._writer = writer
        self._committer = GroupCommitter(writer, max_batch=max_batch)
        self._reads = ReadPool(reader, threads=readers)
        self._opened = False
        insert = insert_for(writer.dialect.name)

        self._insert_run = insert(runs).on_conflict_do_nothing().returning(*runs.c)
        self._claim = (
            update(runs)
            .where(runs.c.run_id == bindparam("p_run_id"), runs.c.status == _PENDING)
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
                update_time=bindparam("p_now"),
            )
            .returning(*runs.c)
        )
        # INSERT INTO steps SELECT <values> FROM runs WHERE <lease holds>
        # ON CONFLICT DO NOTHING: one statement for the common case.
        leased_values = select(
            runs.c.run_id,
            *(bindparam(f"p_{name}", type_=type_) for name, type_ in _STEP_PARAMS),
            runs.c.lease_id,
        ).where(
            runs.c.run_id == bindparam("p_run_id"),
            runs.c.status == _RUNNING,
            runs.c.lease_id == bindparam("p_lease_id"),
        )
        self._insert_step = (
            insert(steps)
            .from_select(["run_id", *(name for name, _ in _STEP_PARAMS), "lease_id"], leased_values)
            .on_conflict_do_nothing()
            .returning(steps.c.sequence)
        )
        self._insert_versions = insert(workflow_versions).on_conflict_do_nothing()
        self._get_run = select(runs).where(runs.c.run_id == bindparam("p_run_id"))
        self._transitions: dict[tuple[tuple[str, ...], bool], Update] = {}

    @property
    def committer(self) -> GroupCommitter:
        """The group committer (its ``commits`` counter is useful in tests and metrics)."""
        return self._committer

    @property
    def writer_engine(self) -> Engine:
        """The engine all writes go through."""
        return self._writer

    @property
    def reader_engine(self) -> Engine:
        """The engine reads go through."""
        return self._reads.engine

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Apply pending migrations and start the writer."""
        if self._opened:
            raise RuntimeError("the store is already open")
        await self._committer.start()
        self._opened = True
        await self._committer.submit(migrate)

    async def close(self) -> None:
        """Finish queued writes, then release every connection."""
        await self._committer.close()
        self._writer.dispose()
        await self._reads.close()

    # -- writes -----------------------------------------------------------

    async def create_run(self, new: NewRun) -> CreateRunOutcome:
        """Insert a PENDING run, or return the run that already has its idempotency key."""
        values = rows.new_run_values(new)

        def op(conn: Connection) -> CreateRunOutcome | RunConflictError:
            inserted = conn.execute(self._insert_run, values).mappings().first()
            if inserted is not None:
                return CreateRunOutcome(rows.run_from_row(inserted), created=True)
            if new.idempotency_key is not None:
                existing = _first(
                    conn, select(runs).where(runs.c.idempotency_key == new.idempotency_key)
                )
                if existing is not None:
                    return CreateRunOutcome(rows.run_from_row(existing), created=False)
            # Returned, not raised: raising would roll back the whole batch.
            return RunConflictError(new.run_id)

        outcome = await self._committer.submit(op)
        if isinstance(outcome, RunConflictError):
            raise outcome
        return outcome

    async def claim_run(
        self, run_id: str, owner: str, lease_expires_at: int, version: str = ""
    ) -> ClaimedRun | None:
        """Move a PENDING run to RUNNING under a new lease; None when it is not PENDING."""
        now = now_ms()
        params = {
            "p_version": version,
            "p_run_id": run_id,
            "p_owner": owner,
            "p_expires": lease_expires_at,
            "p_now": now,
        }

        def op(conn: Connection) -> ClaimedRun | None:
            row = conn.execute(self._claim, params).mappings().first()
            if row is None:
                return None
            run = rows.run_from_row(row)
            history.add(
                conn,
                run_id,
                HistoryType.DISPATCHED,
                now,
                attempt=run.lease_id,
                detail=owner,
            )
            if run.dispatch_count == 1:  # first dispatch: no journal yet
                return ClaimedRun(run)
            return ClaimedRun(run, *waits.ordered_journal(conn, run_id))

        return await self._committer.submit(op)

    async def record_step(self, run_id: str, lease_id: int, step: StepRow) -> RecordStepOutcome:
        """Record a step outcome once per key, only under the run's current lease."""
        params = {f"p_{k}": v for k, v in rows.step_values(run_id, step, now_ms()).items()}
        params["p_lease_id"] = lease_id

        def op(conn: Connection) -> RecordStepOutcome:
            inserted = conn.execute(self._insert_step, params).first()
            if inserted is not None:
                return RecordStepOutcome(RecordStepStatus.RECORDED)
            # Nothing inserted: the lease is gone, or the key was recorded before.
            lease = conn.execute(
                select(runs.c.status, runs.c.lease_id).where(runs.c.run_id == run_id)
            ).first()
            if lease is None or lease.status != _RUNNING or lease.lease_id != lease_id:
                return RecordStepOutcome(RecordStepStatus.LEASE_LOST)
            existing = _first(
                conn,
                select(steps).where(steps.c.run_id == run_id, steps.c.step_key == step.step_key),
            )
            if existing is None:
                raise RuntimeError(f"step {step.step_key!r} of run {run_id!r} was not inserted")
            return RecordStepOutcome(RecordStepStatus.DUPLICATE, rows.step_from_row(existing))

        return await self._committer.submit(op)

    async def transition_run(
        self,
        run_id: str,
        from_statuses: Iterable[RunStatus],
        to_status: RunStatus,
        *,
        lease_id: int | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> RunRecord | None:
        """Set a run's status and ``values`` when the guard matches; else None."""
        columns = _transition_values(values or {})
        sources = sorted({RunStatus(s).value for s in from_statuses})
        if not sources:
            return None
        now = now_ms()
        target = RunStatus(to_status)
        columns["status"] = target.value
        columns["update_time"] = now
        if target.is_terminal:
            columns.setdefault("end_time", now)
        stmt = self._transition_statement(tuple(sorted(columns)), lease_id is not None)
        params = {f"v_{name}": value for name, value in columns.items()}
        params.update(p_run_id=run_id, p_sources=sources, p_lease_id=lease_id)

        def op(conn: Connection) -> RunRecord | None:
            row = conn.execute(stmt, params).mappings().first()
            if row is None:
                return None
            run = rows.run_from_row(row)
            if target is RunStatus.PENDING:
                history.add(conn, run_id, HistoryType.RELEASED, now)
            elif target is RunStatus.CANCELLED:
                history.add(conn, run_id, HistoryType.CANCELLED, now, detail=run.cancel_reason)
            return run

        return await self._committer.submit(op)

    def _transition_statement(self, columns: tuple[str, ...], with_lease: bool) -> Update:
        """Build (once per shape) the guarded UPDATE ... RETURNING of transition_run."""
        key = (columns, with_lease)
        stmt = self._transitions.get(key)
        if stmt is None:
            stmt = update(runs).where(
                runs.c.run_id == bindparam("p_run_id"),
                runs.c.status.in_(bindparam("p_sources", expanding=True)),
            )
            if with_lease:
                stmt = stmt.where(runs.c.lease_id == bindparam("p_lease_id"))
            stmt = stmt.values({name: bindparam(f"v_{name}") for name in columns})
            stmt = stmt.returning(*runs.c)
            self._transitions[key] = stmt
        return stmt

    async def register_workflows(self, versions: Iterable[tuple[str, str]]) -> None:
        """Remember (name, version) pairs; pairs already known keep their first_seen."""
        now = now_ms()
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
        now = now_ms()

        def op(conn: Connection) -> SuspendOutcome:
            return waits.suspend(conn, run_id, lease_id, wait_specs, now)

        return await self._committer.submit(op)

    async def fire_timer(self, run_id: str, wait_key: str) -> RunRecord | None:
        """Mark an open timer met; return the run when that woke it."""
        now = now_ms()

        def op(conn: Connection) -> RunRecord | None:
            return waits.fire_timer(conn, run_id, wait_key, now)

        return await self._committer.submit(op)

    async def send_signal(
        self, run_id: str, name: str, payload_json: str, request_id: str | None
    ) -> SignalOutcome:
        """Buffer a signal for a run, or hand it to the run's open wait for it."""
        now = now_ms()

        def op(conn: Connection) -> SignalOutcome:
            return waits.send_signal(conn, run_id, name, payload_json, request_id, now)

        return await self._committer.submit(op)

    async def execute_hook(
        self, run_id: str, wait_key: str, token_hash: str, payload_json: str
    ) -> HookOutcome:
        """Execute a hook once (deliver now, or keep until the run waits on it)."""
        now = now_ms()

        def op(conn: Connection) -> HookOutcome:
            return waits.execute_hook(conn, run_id, wait_key, token_hash, payload_json, now)

        return await self._committer.submit(op)

    async def server_secret(self, name: str) -> bytes:
        """A per-database secret created by the migrations (e.g. "hook_key")."""
        value = await self._reads.run(
            lambda conn: conn.execute(
                select(server_secrets.c.value).where(server_secrets.c.name == name)
            ).scalar_one()
        )
        return bytes.fromhex(value)

    async def publish_event(self, event_id: str, name: str, payload_json: str) -> PublishOutcome:
        """Store an event and wake the runs waiting for it."""
        now = now_ms()

        def op(conn: Connection) -> PublishOutcome:
            return waits.publish_event(conn, event_id, name, payload_json, now)

        return await self._committer.submit(op)

    async def record_event(
        self, run_id: str, lease_id: int, key: str, name: str, payload_json: str
    ) -> bool:
        """Append a custom history entry once per key, under the run's lease."""
        now = now_ms()

        def op(conn: Connection) -> bool:
            holds = conn.execute(
                select(runs.c.run_id).where(
                    runs.c.run_id == run_id,
                    runs.c.status == _RUNNING,
                    runs.c.lease_id == lease_id,
                )
            ).first()
            if holds is None:
                return False
            history.add_custom(conn, run_id, key, name, payload_json, now)
            return True

        return await self._committer.submit(op)

    async def run_history(self, run_id: str) -> list[HistoryEntry] | None:
        """A run's whole history, oldest first; None for an unknown run."""
        return await self._reads.run(lambda conn: history.read(conn, run_id))

    async def abandon_waits(self, run_id: str) -> int:
        """Abandon a finished run's open waits so that none of them fires."""

        def op(conn: Connection) -> int:
            return waits.abandon_open(conn, run_id)

        return await self._committer.submit(op)

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

    # -- reads ------------------------------------------------------------

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
            row = conn.execute(self._get_run, params).mappings().first()
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

    async def workflow_versions(self) -> list[WorkflowVersion]:
        """Return every registered workflow version, oldest first."""
        t = workflow_versions
        stmt = select(t).order_by(t.c.first_seen, t.c.name, t.c.version)

        def read(conn: Connection) -> list[WorkflowVersion]:
            return [
                WorkflowVersion(name=r["name"], version=r["version"], first_seen=r["first_seen"])
                for r in conn.execute(stmt).mappings()
            ]

        return await self._reads.run(read)


def _runs_reader(stmt: Select[Any]) -> Callable[[Connection], list[RunRecord]]:
    def read(conn: Connection) -> list[RunRecord]:
        return [rows.run_from_row(row) for row in conn.execute(stmt).mappings()]

    return read


def _transition_values(values: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - TRANSITION_COLUMNS)
    if unknown:
        raise ValueError(
            f"transition_run cannot set {', '.join(unknown)}; "
            f"settable columns: {', '.join(sorted(TRANSITION_COLUMNS))}"
        )
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


def _first(conn: Connection, stmt: Any) -> RowMapping | None:
    return conn.execute(stmt).mappings().first()


def _journal_query(run_id: str) -> Select[Any]:
    return select(steps).where(steps.c.run_id == run_id).order_by(steps.c.sequence)


def _journal(conn: Connection, run_id: str) -> list[StepRow]:
    return [rows.step_from_row(row) for row in conn.execute(_journal_query(run_id)).mappings()]


if TYPE_CHECKING:

    def _implements_store(store: SqlStore) -> Store:
        return store
