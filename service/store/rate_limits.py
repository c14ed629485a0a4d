"""Rate limits: turns per (limit, key), taken inside the caller's transaction.

A limit allows ``limit`` turns per ``period_ms`` per key, spread evenly: turns
of one key begin at least ``spacing = ceil(period_ms / limit)`` apart, so no
span of one period holds more than ``limit`` of them (and a little lateness
of one turn cannot squeeze two bursts into one period). ``reserve`` takes the
earliest turn at or after ``not_before`` in one statement, an upsert of the
key's row (``rate_turns``): the new turn is the later of ``not_before`` and
the key's last turn plus the spacing. The row lock of that upsert orders
concurrent turns of a key, across PostgreSQL replicas too; SQLite has one
writer. A key's row matters only until its next turn is in the past: the
sweep (``forget_turns``) deletes such rows. A run whose start turn passed
long before it could be released (the server was down) takes a new turn
(``retake_start_turn``), so a backlog does not start all at once.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, func, select, update

from stepd.server.domain import RunRecord, RunStatus
from stepd.server.domain_flow import FlowSettings
from stepd.server.store import rows
from stepd.server.store.dialects import insert_for
from stepd.server.store.executor import Committer
from stepd.server.store.schema import rate_turns, runs, workflow_flow


def flow_settings_for(conn: Connection, workflow_name: str) -> FlowSettings | None:
    """The flow-control settings ``workflow_name`` declared, if any."""
    stmt = select(workflow_flow.c.settings_json).where(
        workflow_flow.c.workflow_name == workflow_name
    )
    text = conn.execute(stmt).scalar()
    return FlowSettings.from_json(text) if text is not None else None


_t = rate_turns


def spacing_ms(limit: int, period_ms: int) -> int:
    """How far apart the turns of one key begin: the period over the limit, rounded up."""
    return -(-period_ms // limit)


def reserve(
    conn: Connection, name: str, key: str, limit: int, period_ms: int, not_before: int
) -> int:
    """Take the earliest turn of ``key`` under the limit at or after
    ``not_before``; return when it begins (epoch ms)."""
    spacing = spacing_ms(limit, period_ms)
    later = func.max if conn.dialect.name == "sqlite" else func.greatest
    insert = insert_for(conn.dialect.name)(_t).values(
        limit_name=name, limit_key=key, last_turn=not_before, spacing_ms=spacing
    )
    stmt = insert.on_conflict_do_update(
        index_elements=[_t.c.limit_name, _t.c.limit_key],
        set_={
            "last_turn": later(insert.excluded.last_turn, _t.c.last_turn + spacing),
            "spacing_ms": spacing,
        },
    ).returning(_t.c.last_turn)
    return int(conn.execute(stmt).scalar_one())


_FORGET = delete(_t).where(_t.c.last_turn + _t.c.spacing_ms <= bindparam("p_now"))


def forget_turns(conn: Connection, now: int) -> int:
    """Delete the keys whose next turn would begin by ``now`` (they no longer
    hold anything back); return how many."""
    return int(conn.execute(_FORGET, {"p_now": now}).rowcount or 0)


def retake_start_turn(conn: Connection, run_id: str, now: int) -> RunRecord | None:
    """A run released late (its start turn long past: the server was down, say)
    takes a new turn from ``now`` under its workflow's start rate limit, which
    becomes its start time; the run, or None when it is not a pending run that
    never started."""
    row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    if row is None or row["status"] != RunStatus.PENDING.value or row["dispatch_count"]:
        return None
    run = rows.run_from_row(row)
    settings = flow_settings_for(conn, run.workflow_name)
    rate = settings.start_rate if settings is not None else None
    if rate is None or run.rate_key is None:  # the limit is gone: start now
        turn = now
    else:
        turn = reserve(conn, rate.name, run.rate_key, rate.limit, rate.period_ms, now)
    updated = (
        conn.execute(
            update(runs)
            .where(runs.c.run_id == run_id, runs.c.status == RunStatus.PENDING.value)
            .values(start_time_not_before=turn, update_time=now)
            .returning(*runs.c)
        )
        .mappings()
        .first()
    )
    return rows.run_from_row(updated) if updated is not None else None


class RateStoreMixin:
    """The ``Store`` methods for rate limits, for ``SqlStore``."""

    _committer: Committer

    async def reserve_rate(
        self, name: str, key: str, limit: int, period_ms: int, not_before: int
    ) -> int:
        """Take the earliest turn under a rate limit at or after ``not_before``;
        return when it begins (epoch ms)."""
        return await self._committer.submit(
            lambda conn: reserve(conn, name, key, limit, period_ms, not_before)
        )

    async def retake_start_turn(self, run_id: str, now: int) -> RunRecord | None:
        """A run released late takes a new start turn from ``now``; the run."""
        return await self._committer.submit(lambda conn: retake_start_turn(conn, run_id, now))

    async def forget_rate_turns(self, now: int) -> int:
        """Delete rate-limit keys whose next turn would begin by ``now``."""
        return await self._committer.submit(lambda conn: forget_turns(conn, now))
