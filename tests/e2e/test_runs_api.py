"""ListRuns filters and pagination, CancelRun of pending and running runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from stepd import Client, RunCancelledError, RunStatus
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as api
from tests.e2e import workflows as wf
from tests.e2e.harness import ManagedProcess, Server, Stack, eventually, read_marks, release

if TYPE_CHECKING:
    from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

RESULT_TIMEOUT = 30


async def list_all(
    stub: WorkflowServiceAsyncStub, page_size: int, **filters
) -> list[types_pb2.Run]:
    """Page through ListRuns; check every page's size and token."""
    runs: list[types_pb2.Run] = []
    request = api.ListRunsRequest(page_size=page_size, **filters)
    for _ in range(1000):
        page = await stub.ListRuns(request)
        assert len(page.runs) <= page_size
        runs.extend(page.runs)
        if not page.next_page_token:
            return runs
        assert len(page.runs) == page_size, "only the last page may be short"
        request.page_token = page.next_page_token
    raise AssertionError("ListRuns never returned an empty next_page_token")


async def test_list_runs_filters_and_pagination(
    stack: Stack, server: Server, client: Client, workflow_stub: WorkflowServiceAsyncStub, tag: str
) -> None:
    worker = stack.start_worker(server)
    squares = [(await client.trigger(wf.square_workflow, i)).run_id for i in range(23)]
    echoes = [(await client.trigger(wf.echo, {"n": i})).run_id for i in range(2)]
    failed = (await client.trigger(wf.fail, wf.Job(tag=tag))).run_id
    for run_id in [*squares, *echoes, failed]:
        await wait_terminal(client, run_id)
    assert worker.stop() == 0
    pending = [
        (await client.trigger(wf.sequential, wf.Job(tag=f"{tag}-{i}"))).run_id for i in range(4)
    ]
    every = [*squares, *echoes, failed, *pending]

    # Newest first, across pages of 5: no duplicates, no gaps.
    by_workflow = await list_all(workflow_stub, 5, workflow_name="e2e.square")
    assert [r.run_id for r in by_workflow] == squares[::-1]
    assert {r.status for r in by_workflow} == {types_pb2.RUN_STATUS_COMPLETED}

    everything = await list_all(workflow_stub, 7)
    assert [r.run_id for r in everything] == every[::-1]

    only_pending = await list_all(workflow_stub, 3, statuses=[types_pb2.RUN_STATUS_PENDING])
    assert [r.run_id for r in only_pending] == pending[::-1]

    finished = await list_all(
        workflow_stub,
        10,
        statuses=[types_pb2.RUN_STATUS_COMPLETED, types_pb2.RUN_STATUS_FAILED],
    )
    assert sorted(r.run_id for r in finished) == sorted([*squares, *echoes, failed])

    both = await list_all(
        workflow_stub, 10, workflow_name="e2e.fail", statuses=[types_pb2.RUN_STATUS_FAILED]
    )
    assert [r.run_id for r in both] == [failed]
    none = await list_all(
        workflow_stub, 10, workflow_name="e2e.square", statuses=[types_pb2.RUN_STATUS_PENDING]
    )
    assert none == []

    # The SDK pages the same way.
    listed = [info.run_id async for info in client.list_runs(workflow="e2e.square", page_size=4)]
    assert listed == squares[::-1]
    waiting = [info async for info in client.list_runs(statuses=[RunStatus.PENDING], page_size=2)]
    assert [info.run_id for info in waiting] == pending[::-1]
    assert {info.status for info in waiting} == {RunStatus.PENDING}


async def test_list_runs_rejects_a_bad_page_token(workflow_stub: WorkflowServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await workflow_stub.ListRuns(api.ListRunsRequest(page_token="not-a-token"))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_a_pending_run(
    stack: Stack,
    server: Server,
    client: Client,
    workflow_stub: WorkflowServiceAsyncStub,
    marks: Path,
    tag: str,
) -> None:
    # A worker registers the workflows once, then no worker is running.
    assert stack.start_worker(server).stop() == 0
    handle = await client.trigger(wf.sequential, wf.Job(tag=tag))
    assert (await client.get_run(handle.run_id)).status is RunStatus.PENDING

    await client.cancel(handle.run_id, reason="customer changed their mind")

    info = await client.get_run(handle.run_id)
    assert info.status is RunStatus.CANCELLED
    assert info.end_time is not None
    with pytest.raises(RunCancelledError):
        await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    again = await workflow_stub.CancelRun(api.CancelRunRequest(run_id=handle.run_id))
    assert again.already_cancelled
    assert again.run.cancel_reason == "customer changed their mind"

    # A worker that comes up later never runs it.
    stack.start_worker(server)
    assert await client.execute(wf.square_workflow, 2) == 4
    assert (await client.get_run(handle.run_id)).status is RunStatus.CANCELLED
    assert read_marks(marks, tag) == []


async def test_cancel_a_running_run(
    server: Server,
    worker: ManagedProcess,
    client: Client,
    workflow_stub: WorkflowServiceAsyncStub,
    marks: Path,
    tag: str,
) -> None:
    handle = await client.trigger(wf.cancellable, wf.Job(tag=tag))
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the blocking step")
    assert (await client.get_run(handle.run_id)).status is RunStatus.RUNNING

    await client.cancel(handle.run_id, reason="stop it")

    with pytest.raises(RunCancelledError):
        await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    # The worker stops the step that was running ...
    await eventually(lambda: "hold:cancelled" in read_marks(marks, tag), what="step cancellation")
    # ... and nothing it does afterwards completes the run.
    release(marks, tag)
    assert await client.execute(wf.square_workflow, 3) == 9
    await asyncio.sleep(0.5)
    run = (await workflow_stub.GetRun(api.GetRunRequest(run_id=handle.run_id))).run
    assert run.status == types_pb2.RUN_STATUS_CANCELLED
    assert run.cancel_reason == "stop it"
    assert not run.result.json
    lines = read_marks(marks, tag)
    assert "hold:end" not in lines
    assert "after" not in lines


async def test_cancel_a_finished_run_is_a_failed_precondition(
    worker: ManagedProcess, client: Client, workflow_stub: WorkflowServiceAsyncStub
) -> None:
    handle = await client.trigger(wf.square_workflow, 6)
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == 36

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await workflow_stub.CancelRun(api.CancelRunRequest(run_id=handle.run_id))
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert (await client.get_run(handle.run_id)).status is RunStatus.COMPLETED


async def wait_terminal(client: Client, run_id: str) -> None:
    """Wait until a run is completed, failed or cancelled."""
    terminal = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
    for _ in range(RESULT_TIMEOUT * 20):
        if (await client.get_run(run_id)).status in terminal:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")
