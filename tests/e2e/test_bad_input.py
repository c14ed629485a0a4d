"""Bad input gets the right gRPC status code, and the server keeps serving.

These use the raw generated stubs, so they see the codes on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as api
from tests.e2e.harness import ManagedProcess

if TYPE_CHECKING:
    from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

MAX_PAYLOAD = 2 * 1024 * 1024


async def expect_code(call, code: grpc.StatusCode) -> str:
    """Await an RPC that must fail with ``code``; return its message."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() is code, raised.value.details()
    return raised.value.details() or ""


def trigger(workflow: str = "e2e.square", json: str = "3", **fields) -> api.TriggerRequest:
    return api.TriggerRequest(workflow_name=workflow, input=types_pb2.Payload(json=json), **fields)


async def test_unknown_run_id_is_not_found(workflow_stub: WorkflowServiceAsyncStub) -> None:
    message = await expect_code(
        workflow_stub.GetRun(api.GetRunRequest(run_id="no-such-run")), grpc.StatusCode.NOT_FOUND
    )
    assert "no-such-run" in message
    await expect_code(
        workflow_stub.CancelRun(api.CancelRunRequest(run_id="no-such-run")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_invalid_arguments_name_the_problem(workflow_stub: WorkflowServiceAsyncStub) -> None:
    message = await expect_code(
        workflow_stub.Trigger(trigger(workflow="")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "workflow_name" in message

    await expect_code(
        workflow_stub.Trigger(trigger(json='{"unterminated": ')), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_code(
        workflow_stub.Trigger(
            api.TriggerRequest(
                workflow_name="e2e.square",
                input=types_pb2.Payload(encoding="rot13", data=b"abc"),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    message = await expect_code(
        workflow_stub.GetRun(api.GetRunRequest(run_id="")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "run_id" in message


async def test_payload_over_the_limit_is_resource_exhausted(
    workflow_stub: WorkflowServiceAsyncStub,
) -> None:
    info = await workflow_stub.GetServerInfo(api.GetServerInfoRequest())
    assert info.max_payload_bytes == MAX_PAYLOAD

    at_limit = '"' + "x" * (MAX_PAYLOAD - 2) + '"'
    accepted = await workflow_stub.Trigger(trigger(workflow="e2e.echo", json=at_limit))
    assert accepted.run.run_id

    too_big = '"' + "x" * (MAX_PAYLOAD - 1) + '"'
    message = await expect_code(
        workflow_stub.Trigger(trigger(workflow="e2e.echo", json=too_big)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert message


async def test_custom_run_id_conflict_is_already_exists(
    workflow_stub: WorkflowServiceAsyncStub,
) -> None:
    await workflow_stub.Trigger(trigger(run_id="twice"))
    await expect_code(
        workflow_stub.Trigger(trigger(run_id="twice")), grpc.StatusCode.ALREADY_EXISTS
    )
    first = await workflow_stub.Trigger(trigger(idempotency_key="k1"))
    second = await workflow_stub.Trigger(trigger(idempotency_key="k1"))
    assert second.already_existed
    assert second.run.run_id == first.run.run_id


async def test_server_keeps_serving_after_bad_input(
    worker: ManagedProcess, channel: grpc.aio.Channel, workflow_stub: WorkflowServiceAsyncStub
) -> None:
    too_big = '"' + "y" * (MAX_PAYLOAD + 1) + '"'
    bad: list[Awaitable[object]] = [
        workflow_stub.Trigger(trigger(workflow="")),
        workflow_stub.Trigger(trigger(json="{nope")),
        workflow_stub.Trigger(trigger(workflow="e2e.echo", json=too_big)),
        workflow_stub.GetRun(api.GetRunRequest(run_id="missing")),
    ]
    outcomes = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes), outcomes

    # Just under the limit is fine and round-trips through a worker.
    big_ok = '"' + "z" * (MAX_PAYLOAD - 64 * 1024) + '"'
    started = await workflow_stub.Trigger(trigger(workflow="e2e.echo", json=big_ok))
    request = api.GetRunRequest(run_id=started.run.run_id, wait=True)
    request.wait_timeout.FromSeconds(30)
    done = (await workflow_stub.GetRun(request)).run
    assert done.status == types_pb2.RUN_STATUS_COMPLETED, done.error
    assert len(done.result.json) == len(big_ok)

    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
