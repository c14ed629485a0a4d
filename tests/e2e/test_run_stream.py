"""The live run stream (WatchRun), progress, pending waits as data and the new
ListRuns filters, against a real server and worker processes."""

import asyncio
import json
from typing import Any

import grpc
import pytest

from stepd import Client, RunStatus
from stepd.history import RunEvent, RunEventType
from stepd.v1 import workflow_service_pb2 as pb
from tests.e2e.harness import Server, Stack, eventually

OPS = ("tests.e2e.ops_workflows",)
TIMEOUT = 60


@pytest.fixture
def ops_worker(stack: Stack, server: Server) -> object:
    return stack.start_worker(server, OPS)


async def _wait_status(client: Client, run_id: str, status: RunStatus) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while (await client.get_run(run_id)).status is not status:
        assert asyncio.get_running_loop().time() < deadline, f"run {run_id} never {status}"
        await asyncio.sleep(0.05)


async def test_a_watcher_sees_entries_as_they_are_committed_and_the_stream_ends_with_the_run(
    server: Server, ops_worker: object, client: Client
) -> None:
    handle = await client.trigger("ops.progress", {"name": "w"})
    seen: list[RunEvent] = []

    async def follow() -> None:
        async for event in handle.watch():
            seen.append(event)

    follower = asyncio.create_task(follow())

    # The run waits for "go" after three steps: the watcher saw all of that live,
    # before the run could end.
    await eventually(
        lambda: any(e.type is RunEventType.SUSPENDED for e in seen),
        within=TIMEOUT,
        what="the suspension",
    )
    assert not follower.done()
    progress = [e.payload for e in seen if e.type is RunEventType.PROGRESS]
    assert progress == [{"done": 1, "of": 3}, {"done": 2, "of": 3}, {"done": 3, "of": 3}]
    assert (await handle.info()).progress == {"done": 3, "of": 3}

    await handle.signal("go", {"ok": True})
    await asyncio.wait_for(follower, TIMEOUT)  # ends by itself once the run ended
    assert seen[-1].type is RunEventType.COMPLETED
    assert seen[-1].payload == {"total": 3, "go": {"ok": True}, "name": "w"}
    # The stream sent the same entries as the history, in order, each once.
    history = [e async for e in client.list_run_events(handle.run_id)]
    assert [(e.sequence, e.type) for e in seen] == [(e.sequence, e.type) for e in history]
    info = await handle.info()
    assert info.progress == "finished"
    listed = [r async for r in client.list_runs(workflow="ops.progress")]
    assert [r.progress for r in listed] == ["finished"]


async def test_watch_resumes_from_a_token_and_answers_not_found(
    server: Server, ops_worker: object, client: Client, workflow_stub: Any
) -> None:
    handle = await client.trigger("ops.echo", {"x": 1})
    assert await handle.result() == {"x": 1}
    run_id = handle.run_id
    first = [m async for m in workflow_stub.WatchRun(pb.WatchRunRequest(run_id=run_id))]
    events = [e for m in first for e in m.events]
    assert events[-1].type == 9  # RUN_EVENT_TYPE_COMPLETED
    assert first[0].run.status == 4 and not first[0].run.HasField("input")
    # From the second entry's token on: the rest, nothing twice.
    page = await workflow_stub.ListRunEvents(pb.ListRunEventsRequest(run_id=run_id, page_size=2))
    rest = [
        e
        async for m in workflow_stub.WatchRun(
            pb.WatchRunRequest(run_id=run_id, page_token=page.next_page_token)
        )
        for e in m.events
    ]
    assert [e.sequence for e in rest] == [e.sequence for e in events[2:]]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in workflow_stub.WatchRun(pb.WatchRunRequest(run_id="nope")):
            pass
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in workflow_stub.WatchRun(pb.WatchRunRequest(run_id="")):
            pass
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in workflow_stub.WatchRun(pb.WatchRunRequest(run_id=run_id, page_token="x")):
            pass
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_get_run_lists_pending_waits_as_data(
    server: Server, ops_worker: object, client: Client, workflow_stub: Any
) -> None:
    handle = await client.trigger("ops.waits", {"order": 7})
    await _wait_status(client, handle.run_id, RunStatus.SUSPENDED)
    response = await workflow_stub.GetRun(pb.GetRunRequest(run_id=handle.run_id))
    waits = {w.wait_key: w for w in response.pending_waits}
    # A timeout is the signal wait's deadline, not a wait of its own.
    assert len(waits) == 5 and not any(k.endswith(":timeout") for k in waits), list(waits)
    by_kind = {pb.PendingWaitKind.Name(w.kind): w for w in response.pending_waits}
    timer = by_kind["PENDING_WAIT_KIND_TIMER"]
    assert timer.fire_time.seconds - timer.since.seconds in range(3599, 3601)
    signal = by_kind["PENDING_WAIT_KIND_SIGNAL"]
    assert signal.name == "approve"
    assert signal.deadline.seconds - signal.since.seconds in range(7199, 7201)
    event = by_kind["PENDING_WAIT_KIND_EVENT"]
    assert event.name == "order.paid" and json.loads(event.match_json) == {"order": 7}
    hook = by_kind["PENDING_WAIT_KIND_HOOK"]
    assert hook.hook_token.startswith("h1.")
    child = by_kind["PENDING_WAIT_KIND_CHILD"]
    assert child.child_run_id
    assert not response.no_worker

    # The token shown is the hook's: executing it wakes the run through the hook.
    await client.execute_hook(hook.hook_token, {"approved": "by hook"})
    result = await asyncio.wait_for(handle.result(), TIMEOUT)
    assert result == {"index": 3, "value": {"approved": "by hook"}}
    done = await workflow_stub.GetRun(pb.GetRunRequest(run_id=handle.run_id))
    assert list(done.pending_waits) == []


async def test_a_pending_run_says_no_worker_serves_it_and_runs_filter_by_key_and_schedule(
    server: Server, client: Client, workflow_stub: Any
) -> None:
    handle = await client.trigger("ops.nobody", {}, idempotency_key="key-1")
    await client.trigger("ops.nobody", {}, idempotency_key="key-2")
    response = await workflow_stub.GetRun(pb.GetRunRequest(run_id=handle.run_id))
    assert response.run.status == 1 and response.no_worker
    assert response.run.idempotency_key == "key-1"
    found = [r async for r in client.list_runs(idempotency_key="key-1")]
    assert [r.run_id for r in found] == [handle.run_id]
    assert found[0].idempotency_key == "key-1"

    await client.create_schedule("ops.nobody", "0 0 1 1 *", schedule_id="yearly")
    started = await client.trigger_schedule("yearly")
    assert started is not None
    by_schedule = [r async for r in client.list_runs(schedule_id="yearly")]
    assert [r.run_id for r in by_schedule] == [started.run_id]
    assert by_schedule[0].schedule_id == "yearly"
    assert [r async for r in client.list_runs(schedule_id="other")] == []


async def test_progress_is_recorded_once_per_call_across_replays(
    stack: Stack, server: Server, client: Client
) -> None:
    # No parked runs: after the signal the run is replayed from the top, and its
    # three progress calls are sent again under the same keys.
    stack.start_worker(server, OPS, args=["--max-cached-runs", "0"])
    handle = await client.trigger("ops.progress", {"name": "r"})
    await _wait_status(client, handle.run_id, RunStatus.SUSPENDED)
    await handle.signal("go", 1)
    assert (await asyncio.wait_for(handle.result(), TIMEOUT))["total"] == 3
    history = [e async for e in client.list_run_events(handle.run_id)]
    dispatches = [e.detail or "" for e in history if e.type is RunEventType.DISPATCHED]
    assert len(dispatches) == 2 and "continuation" not in dispatches[1]  # a replay
    progress = [(e.key, e.payload) for e in history if e.type is RunEventType.PROGRESS]
    assert progress == [
        ("progress:1", {"done": 1, "of": 3}),
        ("progress:2", {"done": 2, "of": 3}),
        ("progress:3", {"done": 3, "of": 3}),
        ("progress:4", "finished"),
    ]
    assert (await handle.info()).progress == "finished"
