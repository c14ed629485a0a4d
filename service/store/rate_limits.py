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
sweep (``forget_turns``) deletes such rows.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, func

from stepd.server.store.dialects import insert_for
from stepd.server.store.executor import Committer
from stepd.server.store.schema import rate_turns

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

    async def forget_rate_turns(self, now: int) -> int:
        """Delete rate-limit keys whose next turn would begin by ``now``."""
        return await self._committer.submit(lambda conn: forget_turns(conn, now))
