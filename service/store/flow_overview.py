"""What operators see of flow control: every declared limit and its queue.

Read on demand (``ListFlowLimits``, ``/metrics``), never on the hot path: a
handful of grouped counts over the indexes the limits already have.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Connection, case, func, select, text

from stepd.server.domain import RunStatus
from stepd.server.domain_flow import FlowLimitKind, FlowLimitState, FlowSettings
from stepd.server.store.executor import Reader
from stepd.server.store.schema import (
    UNFINISHED,
    concurrency_limits,
    rate_turns,
    runs,
    workflow_flow,
)

_PENDING = RunStatus.PENDING.value


def _ms(value: int) -> str:
    if value % 1000:
        return f"{value}ms"
    seconds = value // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _concurrency(conn: Connection) -> list[FlowLimitState]:
    declared: dict[str, tuple[list[str], str]] = {}
    for row in conn.execute(
        select(concurrency_limits).order_by(concurrency_limits.c.workflow_name)
    ):
        workflows, _ = declared.setdefault(
            row.limit_name, ([], f"{row.max_active} active per key, {row.strategy}")
        )
        workflows.append(row.workflow_name)
    counts: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
    stmt = (
        select(
            runs.c.concurrency_name,
            runs.c.admitted,
            func.count(),
            func.count(func.distinct(runs.c.concurrency_key)),
        )
        .where(runs.c.concurrency_name.is_not(None), text(UNFINISHED))
        .group_by(runs.c.concurrency_name, runs.c.admitted)
    )
    for name, admitted, count, keys in conn.execute(stmt):
        counts[name][admitted] = (int(count), int(keys))
    return [
        FlowLimitState(
            FlowLimitKind.CONCURRENCY,
            name,
            tuple(workflows),
            setting,
            active_runs=counts[name].get(1, (0, 0))[0],
            waiting=counts[name].get(0, (0, 0))[0],
            keys_waiting=counts[name].get(0, (0, 0))[1],
        )
        for name, (workflows, setting) in sorted(declared.items())
    ]


def _held_runs(conn: Connection, column: str, key: str, now: int) -> dict[str, tuple[int, int]]:
    """Pending runs whose start is ahead, by ``column`` (with distinct ``key``s)."""
    group, distinct = runs.c[column], runs.c[key]
    stmt = (
        select(group, func.count(), func.count(func.distinct(distinct)))
        .where(
            runs.c.status == _PENDING,
            runs.c.start_time_not_before > now,
            distinct.is_not(None),
        )
        .group_by(group)
    )
    return {name: (int(count), int(keys)) for name, count, keys in conn.execute(stmt)}


def _declared(conn: Connection, now: int) -> tuple[list[FlowLimitState], set[str]]:
    rates: dict[str, tuple[list[str], str]] = {}
    debounced: list[tuple[str, str]] = []
    for name, settings_json in conn.execute(
        select(workflow_flow.c.workflow_name, workflow_flow.c.settings_json).order_by(
            workflow_flow.c.workflow_name
        )
    ):
        settings = FlowSettings.from_json(settings_json)
        if settings.start_rate is not None:
            rate = settings.start_rate
            workflows, _ = rates.setdefault(
                rate.name, ([], f"{rate.limit} per {_ms(rate.period_ms)}")
            )
            workflows.append(name)
        if settings.debounce is not None:
            spec = settings.debounce
            setting = f"period {_ms(spec.period_ms)}"
            if spec.max_wait_ms is not None:
                setting += f", max wait {_ms(spec.max_wait_ms)}"
            debounced.append((name, setting))
    held_rate = _held_runs(conn, "rate_limit", "rate_key", now) if rates else {}
    held_debounce = _held_runs(conn, "workflow_name", "debounce_key", now) if debounced else {}
    found = [
        FlowLimitState(
            FlowLimitKind.START_RATE,
            name,
            tuple(workflows),
            setting,
            waiting=held_rate.get(name, (0, 0))[0],
            keys_waiting=held_rate.get(name, (0, 0))[1],
        )
        for name, (workflows, setting) in sorted(rates.items())
    ]
    found += [
        FlowLimitState(
            FlowLimitKind.DEBOUNCE,
            name,
            (name,),
            setting,
            waiting=held_debounce.get(name, (0, 0))[0],
            keys_waiting=held_debounce.get(name, (0, 0))[1],
        )
        for name, setting in debounced
    ]
    return found, set(rates)


def _step_rates(
    conn: Connection, now: int, start_rates: set[str], limit: int
) -> list[FlowLimitState]:
    """Step rate limits used lately (their keys not swept yet), with the turns
    taken that begin after ``now``."""
    t = rate_turns
    ahead = t.c.last_turn > now
    turns = func.sum(case((ahead, (t.c.last_turn - now) / t.c.spacing_ms + 1), else_=0))
    keys = func.sum(case((ahead, 1), else_=0))
    stmt = (
        select(t.c.limit_name, func.max(t.c.spacing_ms), keys, turns)
        .group_by(t.c.limit_name)
        .order_by(t.c.limit_name)
        .limit(limit)
    )
    return [
        FlowLimitState(
            FlowLimitKind.STEP_RATE,
            name,
            (),
            f"1 per {_ms(int(spacing))} per key",
            waiting=int(waiting or 0),
            keys_waiting=int(busy or 0),
        )
        for name, spacing, busy, waiting in conn.execute(stmt)
        if name not in start_rates
    ]


def overview(conn: Connection, now: int, limit: int) -> list[FlowLimitState]:
    """Every declared limit (and step rate limits with turns ahead), by kind and name."""
    declared, start_rates = _declared(conn, now)
    found = [*_concurrency(conn), *declared, *_step_rates(conn, now, start_rates, limit)]
    order = list(FlowLimitKind)
    found.sort(key=lambda state: (order.index(state.kind), state.name))
    return found[:limit]


class FlowOverviewMixin:
    """The ``Store`` method for the flow-control overview, for ``SqlStore``."""

    _reads: Reader

    async def flow_overview(self, now: int, limit: int) -> list[FlowLimitState]:
        """Every flow-control limit and what waits under it (at most ``limit``)."""
        return await self._reads.run(lambda conn: overview(conn, now, limit))
