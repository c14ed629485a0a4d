"""Trigger with ``wait``: one call starts a run and answers with it finished
(``Client.execute`` uses it), against a real server and worker."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from stepd import Client, RunStatus
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as pb
from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceStub
from tests.e2e import workflows as wf
from tests.e2e.harness import ManagedProcess, Server, Stack
from tests.e2e.test_http import fetch, samples
from tests.e2e.test_signals import RESULT_TIMEOUT, wait_for_status

RUN_ID_HEADER = "stepd-run-id"


def square(value: int, **fields: Any) -> pb.TriggerRequest:
    return pb.TriggerRequest(
        workflow_name="e2e.square", input=types_pb2.Payload(json=str(value)), **fields
    )


async def test_one_trigger_answers_with_the_finished_run(
    server: Server, worker: ManagedProcess
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = WorkflowServiceStub(channel).Trigger(square(9, wait=True), timeout=RESULT_TIMEOUT)
        headers = await call.initial_metadata()
        response = await call

    assert response.run.status == types_pb2.RUN_STATUS_COMPLETED
    assert response.run.result.json == "81"
    # Sent before the wait: the run was stored.
    assert (RUN_ID_HEADER, response.run.run_id) in list(headers)


async def test_execute_makes_one_call(server: Server, worker: ManagedProcess) -> None:
    async with Client(server.address) as client:
        assert await client.execute(wf.square_workflow, 5) == 25

    status, text = await fetch("GET", f"{server.http_url}/metrics")
    assert status == 200
    calls = {
        labels: value
        for (name, labels), value in samples(text).items()
        if name == "stepd_rpcs_total"
    }
    assert calls == {(("code", "OK"), ("method", "Trigger")): 1}


async def test_the_wait_ends_at_its_timeout_with_the_run_as_it_stands(
    server: Server, worker: ManagedProcess, tag: str
) -> None:
    job = wf.Awaiting(tag=tag)
    request = pb.TriggerRequest(
        workflow_name="e2e.await_signal",
        input=types_pb2.Payload(json=job.model_dump_json()),
        wait=True,
        wait_timeout=Duration(nanos=300_000_000),
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        response = await WorkflowServiceStub(channel).Trigger(request, timeout=RESULT_TIMEOUT)
    assert response.run.status not in (
        types_pb2.RUN_STATUS_COMPLETED,
        types_pb2.RUN_STATUS_FAILED,
        types_pb2.RUN_STATUS_CANCELLED,
    )
    async with Client(server.address) as client:
        handle = client.get_handle(response.run.run_id)
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
        await handle.signal("go", {"ok": 1})
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"ok": 1}


async def test_a_negative_wait_timeout_starts_nothing(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = WorkflowServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Trigger(
                square(2, wait=True, wait_timeout=Duration(seconds=-1), run_id="neg")
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "wait_timeout must not be negative"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetRun(pb.GetRunRequest(run_id="neg"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_execute_waits_on_across_a_server_restart(
    stack: Stack, server: Server, worker: ManagedProcess, tag: str
) -> None:
    async with Client(server.address) as client:
        executing = asyncio.create_task(
            client.execute(wf.await_signal, wf.Awaiting(tag=tag), timeout=RESULT_TIMEOUT)
        )
        runs: list[str] = []
        while not runs:
            runs = [run.run_id async for run in client.list_runs(workflow=wf.await_signal)]
            await asyncio.sleep(0.05)
        await wait_for_status(client, runs[0], RunStatus.SUSPENDED)

        # The waiting Trigger breaks with the server; the run was stored, so the
        # call waits on for it (with GetRun) instead of failing.
        server.process.kill()
        restarted = stack.start_server(server.database, address=server.address)
        await asyncio.sleep(0.5)
        assert not executing.done()
        async with Client(restarted.address) as other:
            await wait_for_status(other, runs[0], RunStatus.SUSPENDED)
            await other.signal(runs[0], "go", "after the restart")

        assert await executing == "after the restart"
