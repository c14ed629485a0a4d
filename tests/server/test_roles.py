"""Who may call what: every RPC of every service, with each role and with no key.

The expected table is written out here, apart from the server's own table
(``stepd.server.security.roles``), and must name every method the services
declare: a new RPC fails this test until someone decides who may call it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stepd.server.security.roles import METHOD_RIGHTS, OPEN_METHODS
from stepd.v1 import admin_service_pb2, worker_service_pb2, workflow_service_pb2
from tests.server.secure_harness import SecureHarness, bearer, secure

__all__ = ["secure"]

ALL = frozenset({"admin", "operator", "client", "reader", "worker"})
READERS = frozenset({"admin", "operator", "client", "reader"})
ADMIN = frozenset({"admin"})

#: For each method, the roles that may call it (no key: never).
EXPECTED: dict[str, frozenset[str]] = {
    "WorkflowService/Trigger": frozenset({"admin", "operator", "client"}),
    "WorkflowService/GetRun": READERS,
    "WorkflowService/ListRuns": READERS,
    "WorkflowService/CancelRun": frozenset({"admin", "operator"}),
    "WorkflowService/Signal": frozenset({"admin", "operator", "client"}),
    "WorkflowService/ExecuteHook": frozenset({"admin", "client"}),
    "WorkflowService/PublishEvent": frozenset({"admin", "client"}),
    "WorkflowService/ListRunEvents": READERS,
    "WorkflowService/GetServerInfo": READERS,
    "WorkflowService/CreateSchedule": frozenset({"admin", "operator"}),
    "WorkflowService/GetSchedule": READERS,
    "WorkflowService/ListSchedules": READERS,
    "WorkflowService/PauseSchedule": frozenset({"admin", "operator"}),
    "WorkflowService/ResumeSchedule": frozenset({"admin", "operator"}),
    "WorkflowService/DeleteSchedule": frozenset({"admin", "operator"}),
    "WorkflowService/TriggerSchedule": frozenset({"admin", "operator"}),
    "WorkflowService/WatchRun": READERS,
    "WorkflowService/RetryRun": frozenset({"admin", "operator"}),
    "WorkflowService/ForkRun": frozenset({"admin", "operator"}),
    "WorkflowService/DeleteRun": frozenset({"admin", "operator"}),
    "WorkflowService/CancelRuns": frozenset({"admin", "operator"}),
    "WorkflowService/RetryRuns": frozenset({"admin", "operator"}),
    "WorkflowService/ListWorkers": READERS,
    "WorkflowService/ListFlowLimits": READERS,
    "WorkerService/PollTask": frozenset({"admin", "worker"}),
    "AdminService/CreateApiKey": ADMIN,
    "AdminService/ListApiKeys": ADMIN,
    "AdminService/RevokeApiKey": ADMIN,
    "AdminService/ListWorkflowVersions": READERS,
    "AdminService/PinWorkflowVersion": ADMIN,
    "AdminService/UnpinWorkflowVersion": ADMIN,
    "AdminService/RetireWorkflowVersion": ADMIN,
}

SERVICES = [
    (workflow_service_pb2, "WorkflowService"),
    (worker_service_pb2, "WorkerService"),
    (admin_service_pb2, "AdminService"),
]
DENIALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def methods() -> dict[str, Any]:
    """Every method the stepd services declare, by "Service/Method"."""
    found = {}
    for module, name in SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        for method in service.methods:
            found[f"{name}/{method.name}"] = method
    return found


def test_the_expected_table_and_the_server_s_table_name_every_method() -> None:
    declared = set(methods())
    assert set(EXPECTED) == declared
    served = {f"/stepd.v1.{name}" for name in declared}
    assert served <= set(METHOD_RIGHTS)
    assert not served & OPEN_METHODS


async def call(harness: SecureHarness, path: str, method: Any, key: str | None) -> grpc.StatusCode:
    """Call one method with an empty request (PollTask: a hello for "w"); its status."""
    metadata = bearer(key) if key else ()
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    channel = harness.harness.channel
    if method.client_streaming:
        stream = channel.stream_stream(
            path,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        hello = worker_service_pb2.WorkerHello(
            worker_id="w1",
            capacity=1,
            workflows=[worker_service_pb2.WorkflowRegistration(name="w", version="1")],
        )
        streaming: Any = stream(metadata=metadata)  # type: ignore[call-arg]  # written below
        try:
            await streaming.write(worker_service_pb2.PollTaskRequest(hello=hello))
            first = await asyncio.wait_for(streaming.read(), 10)
            assert first is not grpc.aio.EOF  # type: ignore[attr-defined]
            assert first.HasField("settings")
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            streaming.cancel()
    if method.server_streaming:
        watch = channel.unary_stream(
            path,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        watching: Any = watch(request_type(), metadata=metadata, timeout=10)
        try:
            async for _ in watching:
                break
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            watching.cancel()
        return grpc.StatusCode.OK
    unary = channel.unary_unary(
        path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    try:
        await unary(request_type(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_rpc_with_each_role_and_without_a_key(secure: SecureHarness) -> None:
    keys: dict[str | None, str | None] = {None: None}
    for made in sorted(ALL):
        keys[made] = (await secure.create_key(made, ("w",) if made == "worker" else ()))[1]
    wrong: list[str] = []
    for name, method in methods().items():
        for role, key in keys.items():
            code = await call(secure, f"/stepd.v1.{name}", method, key)
            if role is None:
                expected = "UNAUTHENTICATED"
                ok = code == grpc.StatusCode.UNAUTHENTICATED
            elif role in EXPECTED[name]:
                expected = "allowed"
                ok = code not in DENIALS
            else:
                expected = "PERMISSION_DENIED"
                ok = code == grpc.StatusCode.PERMISSION_DENIED
            if not ok:
                wrong.append(f"{name} as {role or 'no key'}: {code.name}, expected {expected}")
    assert not wrong, "\n".join(wrong)


async def test_a_denial_names_the_missing_right_and_an_unknown_key_is_unauthenticated(
    secure: SecureHarness,
) -> None:
    key_id, reader = await secure.create_key("reader")
    client = secure.harness.client
    try:
        await client.CancelRun(
            workflow_service_pb2.CancelRunRequest(run_id="r"), metadata=bearer(reader)
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        assert exc.details() == (
            f"API key {key_id} (role reader) lacks the right 'cancel' that this call needs"
        )
    else:
        raise AssertionError("a reader key cancelled a run")
    forged = reader[:-4] + ("AAAA" if not reader.endswith("AAAA") else "BBBB")
    for metadata, words in [
        (bearer(forged), "unknown API key"),
        (bearer("not-a-key"), "no stepd API key"),
        ((("authorization", f"Basic {reader}"),), "needs an API key"),
    ]:
        try:
            await client.ListRuns(workflow_service_pb2.ListRunsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            assert words in (exc.details() or "")
            assert reader not in (exc.details() or "")
        else:
            raise AssertionError(f"{metadata} was let in")


async def test_health_is_open_and_reflection_needs_a_key_that_may_connect(
    secure: SecureHarness,
) -> None:
    channel = secure.harness.channel
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest())  # no key at all
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    async def reflect(key: str | None, *, refused: bool = False) -> grpc.StatusCode:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        # A call expected to be refused sends no request: grpc's asyncio client
        # reports a write that races the server's refusal as INTERNAL
        # (grpc/grpc#36066), hiding the status this test checks.
        requests = [] if refused else [reflection_pb2.ServerReflectionRequest(list_services="")]
        streaming = stub.ServerReflectionInfo(iter(requests), metadata=bearer(key) if key else ())
        try:
            async for answer in streaming:
                names = {s.name for s in answer.list_services_response.service}
                assert "stepd.v1.AdminService" in names
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    assert await reflect(None, refused=True) == grpc.StatusCode.UNAUTHENTICATED
    for role in ("admin", "operator", "client", "reader"):
        _, key = await secure.create_key(role)
        assert await reflect(key) == grpc.StatusCode.OK, role
    _, worker = await secure.create_key("worker", ("w",))
    assert await reflect(worker, refused=True) == grpc.StatusCode.PERMISSION_DENIED
