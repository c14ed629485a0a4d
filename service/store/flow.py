"""Flow-control settings per workflow (``workflow_flow``), applied to new runs.

Every place that inserts a run calls ``apply_new`` in the insert's
transaction, next to the concurrency admission: one primary-key read of the
workflow's settings (a table holding only workflows that declared some),
then the run's priority is the trigger's or the workflow's default, and a
workflow with a start rate limit takes the run's turn under it
(``rate_limits.reserve``): a turn in the future becomes the run's start time,
so it waits as a delayed start does (durably, on every replica).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select

from stepd.server.domain_flow import FlowSettings, RateSpec
from stepd.server.store import declared, rate_limits
from stepd.server.store.concurrency import key_from_input
from stepd.server.store.dialects import insert_for
from stepd.server.store.executor import Committer
from stepd.server.store.schema import workflow_flow

_SETTINGS_FOR = select(workflow_flow.c.settings_json).where(
    workflow_flow.c.workflow_name == bindparam("p_workflow")
)


def settings_for(conn: Connection, workflow_name: str) -> FlowSettings | None:
    """The settings ``workflow_name`` declared, if any."""
    text = conn.execute(_SETTINGS_FOR, {"p_workflow": workflow_name}).scalar()
    return FlowSettings.from_json(text) if text is not None else None


def apply_new(
    conn: Connection, values: dict[str, Any], priority: int | None = None
) -> FlowSettings | None:
    """Set a new run's priority in ``values`` (its column values, before the
    insert): ``priority`` when given, else the workflow's default. Return the
    workflow's settings (None: it declared none)."""
    name = values["workflow_name"]
    settings = declared.remember(conn, "flow", name, lambda: settings_for(conn, name))
    if priority is None:
        priority = settings.priority if settings is not None else 0
    values["priority"] = priority or None
    if settings is not None and settings.start_rate is not None:
        _take_start_turn(conn, values, settings.start_rate)
    return settings


def _take_start_turn(conn: Connection, values: dict[str, Any], rate: RateSpec) -> None:
    key = key_from_input(values["input_json"], rate.key_path)
    not_before = max(values["create_time"], values["start_time_not_before"] or 0)
    turn = rate_limits.reserve(conn, rate.name, key, rate.limit, rate.period_ms, not_before)
    values["rate_limit"] = rate.name
    values["rate_key"] = key
    if turn > values["create_time"]:
        values["start_time_not_before"] = turn


def declare(conn: Connection, specs: Mapping[str, FlowSettings], now: int) -> None:
    """Store each workflow's settings (empty ones: the row is removed)."""
    declared.forget(conn)
    t = workflow_flow
    conn.execute(delete(t).where(t.c.workflow_name.in_(sorted(specs))))
    rows = [
        {"workflow_name": name, "settings_json": spec.to_json(), "update_time": now}
        for name, spec in sorted(specs.items())
        if not spec.empty
    ]
    if rows:
        conn.execute(insert_for(conn.dialect.name)(t), rows)


class FlowStoreMixin:
    """The ``Store`` methods for flow-control settings, for ``SqlStore``."""

    _committer: Committer

    async def declare_flow(self, specs: Mapping[str, FlowSettings], now: int) -> None:
        """Store workflows' flow-control settings (empty: none any more)."""
        await self._committer.submit(lambda conn: declare(conn, specs, now))
