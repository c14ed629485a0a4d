"""Two workflows declaring one concurrency limit with different settings: the
server refuses the worker's hello (``test_concurrency.py``)."""

from __future__ import annotations

from stepd import Concurrency, WorkflowContext, workflow


@workflow(name="conflict_a", concurrency=Concurrency(key="id", limit=1, name="shared"))
async def conflict_a(ctx: WorkflowContext) -> None:
    """Limit "shared": 1 per key."""


@workflow(name="conflict_b", concurrency=Concurrency(key="id", limit=2, name="shared"))
async def conflict_b(ctx: WorkflowContext) -> None:
    """Limit "shared": 2 per key."""
