"""Storing what a worker's workflows declare for flow control besides their
concurrency limit (``stepd.server.domain_flow.FlowSettings``): checked, then
written in one transaction, so a trigger on any replica (or after a restart)
applies them even while no worker is connected."""

from __future__ import annotations

from collections.abc import Sequence

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain_flow import FlowSettings
from stepd.server.domain_schedules import WorkflowDeclaration
from stepd.server.engine.debounce import check_debounce
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.priorities import check_priority
from stepd.server.engine.rate_limits import check_start_rate
from stepd.server.store.base import Store


class FlowDeclarations:
    """Checks and stores the flow-control settings of a worker's hello."""

    def __init__(self, store: Store, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._store = store
        self._clock = clock

    @staticmethod
    def settings(declarations: Sequence[WorkflowDeclaration]) -> dict[str, FlowSettings]:
        """Each workflow's settings; InvalidArgument for a bad one."""
        specs: dict[str, FlowSettings] = {}
        for declaration in declarations:
            where = f"hello: workflow {declaration.name!r}"
            priority = check_priority(declaration.priority, f"{where}: priority")
            rate = declaration.start_rate
            if rate is not None:
                check_start_rate(rate, f"{where}: start_rate")
            debounce = declaration.debounce
            if debounce is not None:
                check_debounce(debounce, f"{where}: debounce")
                if rate is not None:
                    raise InvalidArgument(f"{where}: declares both debounce and start_rate")
            specs[declaration.name] = FlowSettings(
                priority=priority, start_rate=rate, debounce=debounce
            )
        return specs

    async def declare(self, declarations: Sequence[WorkflowDeclaration]) -> None:
        """Check and store the settings (a workflow declaring none has none any
        more). InvalidArgument for a bad setting; nothing is stored then."""
        specs = self.settings(declarations)
        if specs:
            await self._store.declare_flow(specs, self._clock.now_ms())
