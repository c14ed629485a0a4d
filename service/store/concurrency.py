"""Concurrency per key, inside the caller's write transaction.

A workflow may declare a limit (``concurrency_limits``): at most ``max_active``
runs per key are *active*, the key read from the run's JSON input at a dotted
path. A run counts against its key from its admission until it ends; the
count is always derived from ``runs`` (admitted and not terminal), so nothing
can leak. Every place that inserts a run calls ``admit_new`` first, in the
insert's transaction: it takes the key's lock (PostgreSQL: an advisory
transaction lock on the limit and key, so replicas cannot over-admit; SQLite
has one writer), counts, and sets the run's limit, key and ``admitted``. A run
not admitted stays PENDING and is never handed out; ``check_key`` admits the
oldest waiting runs when the key has room (after a run ended, and in a
periodic sweep), and for ``cancel_in_progress`` names the runs a newer one
cancels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)

from stepd.server.domain import (
    ConcurrencySpec,
    ConcurrencyStrategy,
    RunRecord,
    RunStatus,
)
from stepd.server.store import declared, rows
from stepd.server.store.dialects import insert_for
from stepd.server.store.executor import Committer, Reader
from stepd.server.store.schema import PENDING_ONLY, UNFINISHED, concurrency_limits, runs

log = logging.getLogger("stepd.store.concurrency")

#: Keys longer than this many characters (or holding a NUL) are replaced by
#: "sha256:" and their hash.
MAX_KEY_CHARS = 256
#: Most waiting runs one ``check_key`` admits or cancels.
CHECK_BATCH = 500

# The partial index over open limited runs serves a query only when the query
# repeats its condition word for word (a bound parameter does not match it).
_OPEN = text(UNFINISHED)
_PENDING = text(PENDING_ONLY)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A run refused by a ``cancel_newest`` limit at its key."""

    limit_name: str
    key: str
    limit: int

    def message(self) -> str:
        """What to tell the caller."""
        return (
            f"concurrency limit {self.limit_name!r} allows {self.limit} active run(s) "
            f"per key and key {self.key!r} is at it (strategy cancel_newest); "
            "retry when a run of that key ended"
        )


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What ``check_key`` did: runs it admitted, runs a newer one cancels."""

    admitted: tuple[RunRecord, ...] = ()
    to_cancel: tuple[str, ...] = ()
    # Runs still wait at the key after the check.
    waiting: bool = False


def key_from_input(input_json: str, path: str) -> str:
    """The key at ``path`` (dotted: object keys, integer list indexes) in a JSON
    document: a string as it is, any other value as compact JSON; a missing
    path gives "null"."""
    try:
        value: Any = json.loads(input_json)
    except ValueError:
        value = None
    for part in path.split(".") if path else ():
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and _is_index(part) and int(part) < len(value):
            value = value[int(part)]
        else:
            value = None
            break
    key = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return bounded_key(key)


def bounded_key(key: str) -> str:
    """A key as stored: itself, or its hash when longer than MAX_KEY_CHARS or
    holding a NUL character (no database keeps one)."""
    if len(key) <= MAX_KEY_CHARS and "\x00" not in key:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _is_index(part: str) -> bool:
    return part.isdigit() and part.isascii()


# Built once: the two statements every insert of a run runs (cached compiled).
_LIMIT_FOR = select(concurrency_limits).where(
    concurrency_limits.c.workflow_name == bindparam("p_workflow")
)
# Plain SQL with the unfinished statuses written in: an IN list of bound values
# is expanded at every execution, and this runs for every insert under a limit.
_ACTIVE_AND_WAITING = text(
    "SELECT admitted, count(*) FROM runs"
    " WHERE concurrency_name = :p_name AND concurrency_key = :p_key"
    f" AND {UNFINISHED}"
    " GROUP BY admitted"
)
_LIMIT_NAMED = (
    select(concurrency_limits)
    .where(concurrency_limits.c.limit_name == bindparam("p_name"))
    .order_by(concurrency_limits.c.workflow_name)
    .limit(1)
)
_WAITING = (
    select(runs.c.run_id, runs.c.seq)
    .where(
        runs.c.concurrency_name == bindparam("p_name"),
        runs.c.concurrency_key == bindparam("p_key"),
        runs.c.admitted == 0,
        _OPEN,
        _PENDING,
    )
    .order_by(runs.c.seq)
    .limit(CHECK_BATCH)
)
_ACTIVE_RUNS = (
    select(runs.c.run_id)
    .where(
        runs.c.concurrency_name == bindparam("p_name"),
        runs.c.concurrency_key == bindparam("p_key"),
        runs.c.admitted == 1,
        _OPEN,
    )
    .order_by(runs.c.seq)
)
# Built once, so a check compiles nothing. A run cancelled since it was read
# as waiting is left alone.
_ADMIT = (
    update(runs)
    .where(runs.c.run_id.in_(bindparam("p_ids", expanding=True)), runs.c.admitted == 0, _PENDING)
    .values(admitted=1, update_time=bindparam("p_now"))
    .returning(*runs.c)
)


def limit_for(conn: Connection, workflow_name: str) -> ConcurrencySpec | None:
    """The limit ``workflow_name`` declared, if any."""
    row = conn.execute(_LIMIT_FOR, {"p_workflow": workflow_name}).mappings().first()
    return _spec(row) if row is not None else None


def limit_named(conn: Connection, limit_name: str) -> ConcurrencySpec | None:
    """The limit called ``limit_name`` (any workflow declaring it), if any."""
    row = conn.execute(_LIMIT_NAMED, {"p_name": limit_name}).mappings().first()
    return _spec(row) if row is not None else None


def _spec(row: Mapping[Any, Any]) -> ConcurrencySpec:
    return ConcurrencySpec(
        name=row["limit_name"],
        key_path=row["key_path"],
        limit=row["max_active"],
        strategy=ConcurrencyStrategy(row["strategy"]),
    )


def lock_key(conn: Connection, limit_name: str, key: str) -> None:
    """Hold the (limit, key) lock until the transaction ends (PostgreSQL only)."""
    if conn.dialect.name == "sqlite":
        return
    digest = hashlib.sha256(f"{limit_name}\n{key}".encode()).digest()
    lock_id = int.from_bytes(digest[:8], "big", signed=True)
    conn.execute(select(func.pg_advisory_xact_lock(bindparam("p_lock", lock_id, BigInteger))))


def _of_key(limit_name: str, key: str) -> Any:
    return and_(runs.c.concurrency_name == limit_name, runs.c.concurrency_key == key)


def active_count(conn: Connection, limit_name: str, key: str) -> int:
    """How many runs of the key are admitted and not ended."""
    stmt = select(func.count()).where(_of_key(limit_name, key), runs.c.admitted == 1, _OPEN)
    return int(conn.execute(stmt).scalar_one())


def _counts(conn: Connection, limit_name: str, key: str) -> tuple[int, int]:
    """The key's active runs and waiting runs, in one statement."""
    params = {"p_name": limit_name, "p_key": key}
    counts = {row[0]: int(row[1]) for row in conn.execute(_ACTIVE_AND_WAITING, params)}
    return counts.get(1, 0), counts.get(0, 0)


def _waiting_count(conn: Connection, limit_name: str, key: str, before_seq: int | None) -> int:
    stmt = select(func.count()).where(
        _of_key(limit_name, key),
        runs.c.admitted == 0,
        _OPEN,
        _PENDING,
    )
    if before_seq is not None:
        stmt = stmt.where(runs.c.seq < before_seq)
    return int(conn.execute(stmt).scalar_one())


def admit_new(
    conn: Connection,
    values: dict[str, Any],
    explicit_key: str | None = None,
    *,
    refuse: bool = True,
) -> Refusal | None:
    """Set a new run's limit, key and admission in ``values`` (its column values,
    before the insert), under the key's lock; a Refusal (nothing set) when a
    ``cancel_newest`` limit is reached and ``refuse`` (else the run waits). A
    workflow without a limit: nothing."""
    name = values["workflow_name"]
    spec = declared.remember(conn, "concurrency", name, lambda: limit_for(conn, name))
    if spec is None:
        return None
    if explicit_key is not None:
        key = bounded_key(explicit_key)
    else:
        key = key_from_input(values["input_json"], spec.key_path)
    lock_key(conn, spec.name, key)
    active, waiting = _counts(conn, spec.name, key)
    room = active < spec.limit and waiting == 0
    if not room and refuse and spec.strategy is ConcurrencyStrategy.CANCEL_NEWEST:
        return Refusal(spec.name, key, spec.limit)
    values["concurrency_name"] = spec.name
    values["concurrency_key"] = key
    values["admitted"] = 1 if room else 0
    return None


def refused_values(values: dict[str, Any], refusal: Refusal, now: int) -> dict[str, Any]:
    """The column values of a run created already cancelled (a child a
    ``cancel_newest`` limit refused, so its parent learns of it)."""
    return {
        **values,
        "status": RunStatus.CANCELLED.value,
        "cancel_reason": refusal.message(),
        "end_time": now,
        "update_time": now,
        "expire_time": None,
    }


def check_key(conn: Connection, limit_name: str, key: str, now: int) -> KeyCheck:
    """Under the key's lock: for ``cancel_in_progress``, name the runs the newest
    waiting ones cancel; admit the oldest waiting runs the key has room for."""
    params = {"p_name": limit_name, "p_key": key}
    # PostgreSQL: read under the key's lock, so a run inserted (and found no room)
    # while this transaction ended one is seen here, or saw the end. SQLite has
    # one writer.
    lock_key(conn, limit_name, key)
    waiting = [(row.run_id, row.seq) for row in conn.execute(_WAITING, params)]
    if not waiting:
        return KeyCheck()
    spec = declared.remember(
        conn, "concurrency limit", limit_name, lambda: limit_named(conn, limit_name)
    )
    # A limit no workflow declares any more admits what waits under it.
    limit = spec.limit if spec is not None else len(waiting)
    to_cancel: list[str] = []
    if spec is not None and spec.strategy is ConcurrencyStrategy.CANCEL_IN_PROGRESS:
        keep = waiting[-limit:]
        to_cancel = [run_id for run_id, _ in waiting[: len(waiting) - len(keep)]]
        waiting = keep
        active = [row.run_id for row in conn.execute(_ACTIVE_RUNS, params)]
        excess = len(active) + len(waiting) - limit
        to_cancel.extend(active[: max(excess, 0)])
    room = limit - _counts(conn, limit_name, key)[0]
    chosen = [run_id for run_id, _ in waiting[: max(room, 0)]]
    admitted: list[RunRecord] = []
    if chosen:
        found = conn.execute(_ADMIT, {"p_ids": chosen, "p_now": now}).mappings()
        admitted = sorted((rows.run_from_row(row) for row in found), key=lambda run: run.seq)
    still_waiting = len(waiting) > len(admitted) or len(to_cancel) > 0
    return KeyCheck(tuple(admitted), tuple(to_cancel), still_waiting)


def waiting_keys(conn: Connection, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` (limit name, key) pairs that have runs waiting for room."""
    stmt = (
        select(runs.c.concurrency_name, runs.c.concurrency_key)
        .where(
            runs.c.concurrency_name.is_not(None),
            runs.c.admitted == 0,
            _OPEN,
            _PENDING,
        )
        .distinct()
        .limit(limit)
    )
    return [(row.concurrency_name, row.concurrency_key) for row in conn.execute(stmt)]


def queue_position(conn: Connection, run: RunRecord) -> tuple[int, int, int]:
    """For a waiting run: how many runs of its key wait ahead of it, how many are
    active, and the limit (0 when no workflow declares it any more)."""
    name, key = run.concurrency_name or "", run.concurrency_key or ""
    spec = limit_named(conn, name)
    ahead = _waiting_count(conn, name, key, run.seq)
    return ahead, active_count(conn, name, key), spec.limit if spec is not None else 0


def declare(conn: Connection, specs: Mapping[str, ConcurrencySpec | None], now: int) -> str | None:
    """Store each workflow's limit (None: the workflow has none any more); an
    error message, and nothing stored, when a limit name would get two settings."""
    declared.forget(conn)
    t = concurrency_limits
    named = {name: spec for name, spec in specs.items() if spec is not None}
    others = [
        (row.workflow_name, _spec(row))
        for row in conn.execute(
            select(t).where(
                t.c.limit_name.in_(sorted({s.name for s in named.values()})),
                t.c.workflow_name.not_in(sorted(specs)),
            )
        ).mappings()
    ]
    conflict = _conflict([*sorted(named.items()), *others])
    if conflict is not None:
        return conflict
    conn.execute(delete(t).where(t.c.workflow_name.in_(sorted(specs))))
    if named:
        conn.execute(
            insert_for(conn.dialect.name)(t),
            [
                {
                    "workflow_name": workflow,
                    "limit_name": spec.name,
                    "key_path": spec.key_path,
                    "max_active": spec.limit,
                    "strategy": spec.strategy.value,
                    "update_time": now,
                }
                for workflow, spec in sorted(named.items())
            ],
        )
    return None


def _conflict(declared: Iterable[tuple[str, ConcurrencySpec]]) -> str | None:
    first: dict[str, tuple[str, ConcurrencySpec]] = {}
    for workflow, spec in declared:
        seen = first.setdefault(spec.name, (workflow, spec))
        if (seen[1].limit, seen[1].strategy) != (spec.limit, spec.strategy):
            return (
                f"workflows {seen[0]!r} and {workflow!r} declare concurrency limit "
                f"{spec.name!r} with different settings ({seen[1].limit}, "
                f"{seen[1].strategy.value} and {spec.limit}, {spec.strategy.value}); "
                "a shared limit needs the same limit and strategy"
            )
    return None


class ConcurrencyStoreMixin:
    """The ``Store`` methods for concurrency limits, for ``SqlStore``."""

    _committer: Committer
    _reads: Reader

    async def declare_concurrency(
        self, specs: Mapping[str, ConcurrencySpec | None], now: int
    ) -> str | None:
        """Store workflows' limits (None: none any more); an error message, and
        nothing stored, when one limit name would get two settings."""
        return await self._committer.submit(lambda conn: declare(conn, specs, now))

    async def check_concurrency_key(self, limit_name: str, key: str, now: int) -> KeyCheck:
        """Admit the oldest runs waiting at a key that has room; name the runs a
        newer one cancels (``cancel_in_progress``)."""
        return await self._committer.submit(lambda conn: check_key(conn, limit_name, key, now))

    async def concurrency_waiting_keys(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (limit name, key) pairs with runs waiting for room."""
        return await self._reads.run(lambda conn: waiting_keys(conn, limit))

    async def concurrency_queue_position(self, run: RunRecord) -> tuple[int, int, int]:
        """For a waiting run: runs waiting ahead of it, active runs, the limit."""
        return await self._reads.run(lambda conn: queue_position(conn, run))
