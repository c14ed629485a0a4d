"""claim_run, record_step, load_journal and the run moves (release, complete, fail,
cancel) with their guards."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event

from stepd.server.domain import (
    ErrorDetails,
    FailureReason,
    RecordStepStatus,
    RunStatus,
    StatusMove,
    StepRow,
    WaitKind,
    WaitSpec,
)
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import SqlStore

from .conftest import new_run


async def running(store: SqlStore, run_id: str = "r1") -> int:
    """Create and claim a run; return its lease id."""
    await store.create_run(new_run(run_id))
    claimed = await store.claim_run(run_id, "worker-1", 60_000)
    assert claimed is not None
    return claimed.run.lease_id


async def requeue(store: SqlStore, run_id: str, lease_id: int) -> None:
    moved = await store.release_run(run_id, move(RunEvent.RELEASE), lease_id)
    assert moved is not None


# -- claim_run -------------------------------------------------------------


async def test_claim_run_takes_a_pending_run_once(store: SqlStore) -> None:
    created = (await store.create_run(new_run("r1"))).run

    claimed = await store.claim_run("r1", "worker-1", 99_000)
    assert claimed is not None
    run = claimed.run
    assert run.status is RunStatus.RUNNING
    assert (run.dispatch_count, run.lease_id, run.lease_owner) == (1, 1, "worker-1")
    assert run.start_time is not None and run.start_time >= created.create_time
    assert run.update_time == run.start_time
    assert claimed.journal == []
    assert await store.get_run("r1") == run

    assert await store.claim_run("r1", "worker-2", 99_000) is None
    assert await store.get_run("r1") == run


async def test_claim_run_of_unknown_or_cancelled_run_is_none(store: SqlStore) -> None:
    assert await store.claim_run("nope", "w", 1) is None
    await store.create_run(new_run("r1"))
    await store.cancel_run("r1", move(RunEvent.CANCEL), "gone")
    assert await store.claim_run("r1", "w", 1) is None


async def test_concurrent_claims_hand_out_one_lease(store: SqlStore) -> None:
    await store.create_run(new_run("r1"))
    claims = await asyncio.gather(*(store.claim_run("r1", f"w{i}", 1) for i in range(10)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    assert winners[0].run.lease_id == 1


async def test_reclaim_gets_a_new_lease_and_the_journal(store: SqlStore) -> None:
    lease = await running(store)
    first = await store.get_run("r1")
    assert first is not None
    await store.record_step("r1", lease, StepRow("a", 1, '"A"'))
    await store.record_step("r1", lease, StepRow("b", 2, '"B"'))
    await requeue(store, "r1", lease)

    claimed = await store.claim_run("r1", "worker-2", 5)
    assert claimed is not None
    assert (claimed.run.dispatch_count, claimed.run.lease_id) == (2, 2)
    assert claimed.run.lease_owner == "worker-2"
    assert claimed.run.start_time == first.start_time
    assert [(s.step_key, s.attempt, s.result_json) for s in claimed.journal] == [
        ("a", 1, '"A"'),
        ("b", 2, '"B"'),
    ]


async def test_first_claim_does_not_read_the_journal(store: SqlStore) -> None:
    await store.create_run(new_run("r1"))
    statements: list[str] = []

    def capture(*args: Any) -> None:
        statements.append(args[2])

    event.listen(store.writer_engine, "before_cursor_execute", capture)
    try:
        assert await store.claim_run("r1", "w", 1) is not None
    finally:
        event.remove(store.writer_engine, "before_cursor_execute", capture)
    assert statements, "the claim ran no statement on the writer"
    assert not [s for s in statements if "steps" in s]


# -- record_step -------------------------------------------------------------


async def test_record_step_stores_result_and_error(store: SqlStore) -> None:
    lease = await running(store)
    error = ErrorDetails("ValueError", "bad", "Traceback...", "charge", 3)

    ok = await store.record_step("r1", lease, StepRow("charge", 1, '{"ok": 1}', None, 10, 20))
    failed = await store.record_step("r1", lease, StepRow("refund", 3, None, error, 30, 40))

    assert ok.status is RecordStepStatus.RECORDED and ok.existing is None
    assert failed.status is RecordStepStatus.RECORDED
    journal = await store.load_journal("r1")
    assert [(s.step_key, s.attempt, s.result_json, s.error) for s in journal] == [
        ("charge", 1, '{"ok": 1}', None),
        ("refund", 3, None, error),
    ]
    assert [(s.start_time, s.end_time) for s in journal] == [(10, 20), (30, 40)]
    assert 0 < journal[0].sequence < journal[1].sequence


async def test_duplicate_step_returns_the_first_row_unchanged(store: SqlStore) -> None:
    lease = await running(store)
    await store.record_step("r1", lease, StepRow("a", 1, '"first"', None, 1, 2))
    stored = await store.load_journal("r1")

    again = await store.record_step("r1", lease, StepRow("a", 2, '"second"', None, 3, 4))

    assert again.status is RecordStepStatus.DUPLICATE
    assert again.existing == stored[0]
    assert again.existing is not None and again.existing.result_json == '"first"'
    assert await store.load_journal("r1") == stored


async def test_stale_lease_is_refused_even_for_a_recorded_key(store: SqlStore) -> None:
    old_lease = await running(store)
    await store.record_step("r1", old_lease, StepRow("a", 1, '"A"'))
    await requeue(store, "r1", old_lease)
    claimed = await store.claim_run("r1", "worker-2", 1)
    assert claimed is not None

    zombie_new = await store.record_step("r1", old_lease, StepRow("b", 1, '"zombie"'))
    zombie_dup = await store.record_step("r1", old_lease, StepRow("a", 1, '"zombie"'))

    assert zombie_new.status is RecordStepStatus.LEASE_LOST
    assert zombie_dup.status is RecordStepStatus.LEASE_LOST and zombie_dup.existing is None
    assert [s.step_key for s in await store.load_journal("r1")] == ["a"]
    fresh = await store.record_step("r1", claimed.run.lease_id, StepRow("b", 1, '"B"'))
    assert fresh.status is RecordStepStatus.RECORDED


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.SUSPENDED, RunStatus.COMPLETED])
async def test_record_step_needs_a_running_run(store: SqlStore, status: RunStatus) -> None:
    lease = await running(store)
    if status is RunStatus.PENDING:
        await store.release_run("r1", move(RunEvent.RELEASE), lease)
    elif status is RunStatus.SUSPENDED:
        await store.suspend_run("r1", lease, [WaitSpec("s", WaitKind.TIMER, 10**15)])
    else:
        await store.complete_run("r1", move(RunEvent.COMPLETE), lease, "1")

    outcome = await store.record_step("r1", lease, StepRow("a", 1, "1"))

    assert outcome.status is RecordStepStatus.LEASE_LOST
    assert await store.load_journal("r1") == []


async def test_record_step_for_unknown_run_is_lease_lost(store: SqlStore) -> None:
    outcome = await store.record_step("nope", 1, StepRow("a", 1, "1"))
    assert outcome.status is RecordStepStatus.LEASE_LOST


async def test_load_journal_of_unknown_run_is_empty(store: SqlStore) -> None:
    assert await store.load_journal("nope") == []


# -- release, complete, fail, cancel -------------------------------------------


async def test_complete_sets_result_and_end_time(store: SqlStore) -> None:
    lease = await running(store)
    before = await store.get_run("r1")
    assert before is not None

    done = await store.complete_run("r1", move(RunEvent.COMPLETE), lease, "42")

    assert done is not None
    assert done.status is RunStatus.COMPLETED
    assert done.result_json == "42"
    assert done.lease_owner is None
    assert done.end_time is not None and done.end_time == done.update_time
    assert done.update_time >= before.update_time
    assert (done.lease_id, done.dispatch_count, done.start_time) == (
        before.lease_id,
        before.dispatch_count,
        before.start_time,
    )
    assert await store.get_run("r1") == done


async def test_fail_stores_error_and_reason(store: SqlStore) -> None:
    lease = await running(store)
    error = ErrorDetails("app.Boom", "boom", "tb", "step-1", 2)

    failed = await store.fail_run(
        "r1", move(RunEvent.FAIL), error, FailureReason.WORKFLOW_ERROR, lease_id=lease
    )

    assert failed is not None
    assert failed.status is RunStatus.FAILED
    assert failed.error == error
    assert failed.failure_reason is FailureReason.WORKFLOW_ERROR
    assert failed.lease_owner is None and failed.end_time is not None
    assert await store.get_run("r1") == failed


@pytest.mark.parametrize("where", ["pending", "running", "suspended"])
async def test_fail_without_a_lease_ends_the_run_wherever_it_stands(
    store: SqlStore, where: str
) -> None:
    await store.create_run(new_run("r1"))
    if where != "pending":
        claimed = await store.claim_run("r1", "worker-1", 60_000)
        assert claimed is not None
        if where == "suspended":
            wait = WaitSpec("s", WaitKind.TIMER, 10**15)
            await store.suspend_run("r1", claimed.run.lease_id, [wait])
    error = ErrorDetails("stepd.DeadlineExceeded", "too late")

    failed = await store.fail_run(
        "r1", move(RunEvent.EXPIRE), error, FailureReason.DEADLINE_EXCEEDED
    )

    assert failed is not None and failed.status is RunStatus.FAILED
    assert failed.error == error
    assert failed.failure_reason is FailureReason.DEADLINE_EXCEEDED
    assert (
        await store.fail_run("r1", move(RunEvent.EXPIRE), error, FailureReason.DEADLINE_EXCEEDED)
        is None
    )


async def test_release_gives_the_run_back_without_an_owner(store: SqlStore) -> None:
    lease = await running(store)

    released = await store.release_run("r1", move(RunEvent.RELEASE), lease)

    assert released is not None
    assert released.status is RunStatus.PENDING and released.end_time is None
    assert released.lease_owner is None and released.lease_id == lease
    assert await store.release_run("r1", move(RunEvent.RELEASE), lease) is None


async def test_illegal_transition_returns_none_and_changes_nothing(store: SqlStore) -> None:
    await store.create_run(new_run("r1"))
    before = await store.get_run("r1")

    # COMPLETE only from RUNNING: a pending run is not completed, whatever the lease.
    result = await store.complete_run("r1", move(RunEvent.COMPLETE), 0, "1")

    assert result is None
    assert await store.get_run("r1") == before


async def test_transition_with_stale_lease_changes_nothing(store: SqlStore) -> None:
    lease = await running(store)
    before = await store.get_run("r1")

    result = await store.complete_run("r1", move(RunEvent.COMPLETE), lease + 1, "1")

    assert result is None
    assert await store.get_run("r1") == before


async def test_move_of_unknown_run_or_no_sources_is_none(store: SqlStore) -> None:
    assert await store.cancel_run("nope", move(RunEvent.CANCEL), "x") is None
    await store.create_run(new_run("r1"))
    nowhere = StatusMove(frozenset(), RunStatus.CANCELLED)
    assert await store.cancel_run("r1", nowhere, "x") is None
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.PENDING


async def test_cancel_stores_the_reason_and_the_end_time(store: SqlStore) -> None:
    await store.create_run(new_run("r1"))
    cancelled = await store.cancel_run("r1", move(RunEvent.CANCEL), "user asked")
    assert cancelled is not None
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.cancel_reason == "user asked"
    assert cancelled.end_time is not None and cancelled.end_time == cancelled.update_time


async def test_a_write_refuses_a_move_to_another_status(store: SqlStore) -> None:
    lease = await running(store)
    before = await store.get_run("r1")
    with pytest.raises(ValueError, match="completed"):
        await store.complete_run("r1", move(RunEvent.RELEASE), lease, "1")
    with pytest.raises(ValueError, match="cancelled"):
        await store.cancel_run("r1", move(RunEvent.FAIL), "x")
    assert await store.get_run("r1") == before


# -- lease expiry -------------------------------------------------------------


async def test_extend_leases_only_for_the_owner_of_running_runs(store: SqlStore) -> None:
    await running(store, "r1")  # worker-1, expires at 60_000
    await running(store, "r2")
    await store.create_run(new_run("r3"))  # pending
    changed = await store.extend_leases("worker-1", ["r1", "r2", "r3", "nope"], 90_000)
    assert changed == 2
    assert await store.extend_leases("worker-2", ["r1"], 120_000) == 0
    r1, r3 = await store.get_run("r1"), await store.get_run("r3")
    assert r1 is not None and r1.lease_expires_at == 90_000
    assert r3 is not None and r3.lease_expires_at is None


async def test_expired_leases_lists_running_runs_past_their_expiry(store: SqlStore) -> None:
    await running(store, "r1")
    await running(store, "r2")
    await store.extend_leases("worker-1", ["r2"], 200_000)
    await store.create_run(new_run("r3"))
    expired = await store.expired_leases(now=100_000, limit=10)
    assert [r.run_id for r in expired] == ["r1"]
    assert await store.expired_leases(now=60_000, limit=10) == []
    assert [r.run_id for r in await store.expired_leases(now=300_000, limit=1)] == ["r1"]


# -- record_event ----------------------------------------------------------------


async def test_record_event_keeps_one_entry_per_key_and_needs_the_lease(store: SqlStore) -> None:
    lease = await running(store)
    # More writes than PostgreSQL's custom plans (5) before it may use a generic one.
    for i in range(12):
        for _ in range(2):
            assert await store.record_event("r1", lease, f"log:{i}", "log", f'"{i}"')
    assert not await store.record_event("r1", lease + 1, "log:x", "log", '"stale"')

    history = await store.run_history("r1")
    assert history is not None
    custom = [(e.key, e.payload_json) for e in history if e.key.startswith("log:")]
    assert custom == [(f"log:{i}", f'"{i}"') for i in range(12)]
