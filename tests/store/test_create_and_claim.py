"""A new run claimed in the transaction that creates it (``create_run`` with a
``claim``): claimed like ``claim_run`` would when nothing would hold it in the
ready queues, left PENDING for them otherwise."""

from __future__ import annotations

import pytest

from stepd.server.domain import ClaimRequest, ConcurrencySpec, HistoryType, RunStatus, now_ms
from stepd.server.domain_flow import FlowSettings, RateSpec
from stepd.server.store import SqlStore

from .conftest import new_run

LEASE_MS = 60_000


def to_worker(version: str = "", execution_timeout_ms: int | None = None) -> ClaimRequest:
    return ClaimRequest("worker-1", now_ms() + LEASE_MS, version, execution_timeout_ms)


async def test_a_plain_new_run_is_claimed_as_it_is_created(store: SqlStore) -> None:
    outcome = await store.create_run(new_run("r1"), to_worker(execution_timeout_ms=5_000))

    assert outcome.created and outcome.claimed is not None
    run = outcome.claimed.run
    assert outcome.run == run
    assert run.status is RunStatus.RUNNING
    assert (run.lease_id, run.dispatch_count, run.lease_owner) == (1, 1, "worker-1")
    assert run.execution_deadline is not None and run.execution_deadline > now_ms()
    assert outcome.claimed.journal == [] and outcome.claimed.waits == []
    # Stored as such: the same as a claim of its own, in the order it happened.
    stored = await store.get_run("r1")
    assert stored is not None and stored.status is RunStatus.RUNNING and stored.lease_id == 1
    history = await store.run_history("r1")
    assert history is not None
    assert [entry.type for entry in history] == [HistoryType.TRIGGERED, HistoryType.DISPATCHED]
    assert history[1].detail == "worker-1"
    # The next claim of it finds it taken.
    assert await store.claim_run("r1", "worker-2", now_ms() + LEASE_MS) is None


async def test_a_run_stored_without_a_version_is_pinned_by_its_claim(store: SqlStore) -> None:
    outcome = await store.create_run(new_run("r1", workflow_version=""), to_worker("v7"))

    assert outcome.claimed is not None and outcome.claimed.run.workflow_version == "v7"


async def test_an_existing_run_is_not_claimed(store: SqlStore) -> None:
    first = await store.create_run(new_run("r1", idempotency_key="k"))
    again = await store.create_run(new_run("r2", idempotency_key="k"), to_worker())

    assert not again.created and again.claimed is None
    assert again.run.run_id == "r1" and again.run.status is RunStatus.PENDING
    assert first.run.lease_id == again.run.lease_id == 0


@pytest.mark.parametrize(
    "held",
    ["start_time", "priority", "concurrency_key", "declared_priority", "rate_limit", "waiting"],
)
async def test_a_run_the_ready_queues_would_hold_or_rank_stays_pending(
    store: SqlStore, held: str
) -> None:
    customer = '{"customer": "c"}'
    new = new_run("r1", input_json=customer)
    if held == "start_time":
        new = new_run("r1", start_time_not_before=now_ms() + 60_000)
    elif held == "priority":
        new = new_run("r1", priority=3)
    elif held == "concurrency_key":
        spec = ConcurrencySpec("orders", "customer", 5)
        assert await store.declare_concurrency({"orders": spec}, now_ms()) is None
    elif held == "declared_priority":
        await store.declare_flow({"orders": FlowSettings(priority=2)}, now_ms())
    elif held == "rate_limit":
        rate = RateSpec("orders-rate", "customer", 10, 1_000)
        await store.declare_flow({"orders": FlowSettings(start_rate=rate)}, now_ms())
    elif held == "waiting":  # no room under its concurrency limit
        spec = ConcurrencySpec("orders", "customer", 1)
        assert await store.declare_concurrency({"orders": spec}, now_ms()) is None
        await store.create_run(new_run("r0", input_json=customer))

    outcome = await store.create_run(new, to_worker())

    assert outcome.created and outcome.claimed is None
    assert outcome.run.status is RunStatus.PENDING and outcome.run.lease_id == 0
    stored = await store.get_run("r1")
    assert stored is not None and stored.status is RunStatus.PENDING
    history = await store.run_history("r1")
    assert history is not None
    assert HistoryType.DISPATCHED not in {entry.type for entry in history}
