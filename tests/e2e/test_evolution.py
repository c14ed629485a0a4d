"""Versions side by side, held runs, recorded values, idempotent triggers."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from stepd.errors import AlreadyExistsError
from stepd.history import RunEventType
from tests.e2e.harness import Server, Stack, read_marks

V1, V2 = ("tests.e2e.versioned_v1",), ("tests.e2e.versioned_v2",)
RESULT_TIMEOUT = 60


async def status_becomes(client: Client, run_id: str, predicate, what: str) -> None:
    for _ in range(1500):
        if predicate(await client.get_run(run_id)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never {what}")


async def test_two_workers_on_two_versions_each_get_only_their_runs(
    client: Client, stack: Stack, server: Server
) -> None:
    one = stack.start_worker(server, V1)
    two = stack.start_worker(server, V2)
    handles = [await client.trigger("e2e.versioned", version=str(1 + i % 2)) for i in range(10)]
    newest = await client.trigger("e2e.versioned")  # no version: the newest registered
    results = [await asyncio.wait_for(h.result(), RESULT_TIMEOUT) for h in handles]
    assert results == [f"code {v} ran version {v}" for v in [1, 2] * 5]
    assert await asyncio.wait_for(newest.result(), RESULT_TIMEOUT) == "code 2 ran version 2"
    for handle, version in zip(handles, [1, 2] * 5, strict=True):
        events = [e async for e in client.list_run_events(handle.run_id)]
        (dispatch,) = [e for e in events if e.type is RunEventType.DISPATCHED]
        pid = (one if version == 1 else two).pid
        assert f":{pid} " in (dispatch.detail or ""), dispatch.detail


async def test_a_changed_workflow_is_held_then_resumed_by_the_right_code(
    client: Client, stack: Stack, server: Server, marks: Path, tag: str
) -> None:
    original = stack.start_worker(server, V1)
    handle = await client.trigger("e2e.changing", tag, version="1")
    await status_becomes(
        client, handle.run_id, lambda r: r.status is RunStatus.SUSPENDED, "suspended"
    )
    assert original.stop() == 0
    changed = stack.start_worker(server, V2)
    await client.signal(handle.run_id, "go")
    await status_becomes(client, handle.run_id, lambda r: r.held_error is not None, "was held")
    held = await client.get_run(handle.run_id)
    assert held.status is RunStatus.PENDING
    assert "second" in (held.held_error or "") and "other" in (held.held_error or "")
    events = [e async for e in client.list_run_events(handle.run_id)]
    (hold,) = [e for e in events if e.type is RunEventType.HELD]
    assert hold.error_type == "stepd.errors.NonDeterminismError"
    assert hold.error_message == held.held_error

    stack.start_worker(server, V1)  # matching code comes back
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == "a,b,c"
    assert read_marks(marks, tag) == ["first", "second", "third"]  # `other` never ran
    final = await client.get_run(handle.run_id)
    assert final.held_error is None
    events = [e async for e in client.list_run_events(handle.run_id)]
    dispatches = [e.detail for e in events if e.type is RunEventType.DISPATCHED]
    assert len(dispatches) == 3  # original, changed (held once, never again), original
    assert f":{changed.pid} " in (dispatches[1] or "")
    assert changed.returncode is None


async def test_now_uuid_and_random_are_stable_across_replays(
    client: Client, stack: Stack, server: Server
) -> None:
    stack.start_worker(server, V1)
    before = datetime.now(UTC)
    handle = await client.trigger("e2e.deterministic")
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result["replayed"] == result["first"]
    moment = datetime.fromisoformat(result["replayed"][0])
    assert before - timedelta(seconds=5) <= moment <= datetime.now(UTC)
    assert len(set(result["replayed"])) == 3
    events = [e async for e in client.list_run_events(handle.run_id)]
    keys = [e.key for e in events if e.type is RunEventType.STEP_COMPLETED]
    assert keys[:3] == ["now:1", "uuid:1", "random:1"] and "now:2" in keys
    assert sum(e.type is RunEventType.DISPATCHED for e in events) == 2  # a replay happened


async def test_concurrent_triggers_with_one_idempotency_key_make_one_run(
    client: Client, server: Server, tag: str
) -> None:
    handles = await asyncio.gather(
        *(client.trigger("e2e.versioned", idempotency_key=tag) for _ in range(25))
    )
    assert len({h.run_id for h in handles}) == 1
    assert sorted(h.already_existed for h in handles) == [False] + [True] * 24
    runs = [r async for r in client.list_runs(workflow="e2e.versioned")]
    assert [r.run_id for r in runs] == [handles[0].run_id]


async def test_a_custom_run_id_conflicts_unless_the_key_matches(
    client: Client, server: Server, tag: str
) -> None:
    first = await client.trigger("e2e.versioned", run_id=f"order-{tag}", idempotency_key=tag)
    again = await client.trigger("e2e.versioned", run_id=f"order-{tag}", idempotency_key=tag)
    assert again.run_id == first.run_id and again.already_existed
    with pytest.raises(AlreadyExistsError, match="already exists"):
        await client.trigger("e2e.versioned", run_id=f"order-{tag}")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        await client.trigger("e2e.versioned", run_id=f"order-{tag}", idempotency_key="other")
