"""Client and RunHandle over real gRPC against a fake WorkflowService; error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from stepd import (
    Client,
    NotFoundError,
    RunCancelledError,
    RunFailedError,
    RunInfo,
    RunStatus,
    StepdError,
    WorkflowContext,
    workflow,
)
from stepd import errors as sdk_errors
from stepd._rpc import sdk_error
from stepd.errors import PayloadError
from stepd.v1 import types_pb2, workflow_service_pb2

from .fake_server import FakeWorkflowService, start_server


@dataclass
class Order:
    id: int


@dataclass
class Receipt:
    order_id: int
    total: float


@workflow(name="orders.process", version=4)
async def process(ctx: WorkflowContext, order: Order) -> Receipt:
    raise NotImplementedError


@workflow
async def no_input(ctx: WorkflowContext) -> int:
    raise NotImplementedError


def run(run_id: str, status: types_pb2.RunStatus.ValueType, **fields: object) -> types_pb2.Run:
    return types_pb2.Run(run_id=run_id, status=status, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeWorkflowService, Client]]:
    service = FakeWorkflowService()
    server, address = await start_server(service)
    async with Client(address) as client:
        yield service, client
    await server.stop(None)


async def test_trigger_by_workflow_pins_version_and_types_the_result(
    fake: tuple[FakeWorkflowService, Client],
) -> None:
    service, client = fake
    service.runs["custom"] = [
        run("custom", types_pb2.RUN_STATUS_RUNNING),
        run(
            "custom",
            types_pb2.RUN_STATUS_COMPLETED,
            result=types_pb2.Payload(json='{"order_id": 3, "total": 9.5}'),
        ),
    ]
    handle = await client.trigger(process, Order(3), run_id="custom", idempotency_key="k")
    assert (handle.run_id, handle.already_existed) == ("custom", True)
    request = service.requests[0]
    assert isinstance(request, workflow_service_pb2.TriggerRequest)
    assert (request.workflow_name, request.workflow_version) == ("orders.process", "4")
    assert request.input.json == '{"id":3}'
    assert (request.run_id, request.idempotency_key) == ("custom", "k")

    receipt = await handle.result(timeout=5)
    assert receipt == Receipt(order_id=3, total=9.5)
    waits = [r for r in service.requests if isinstance(r, workflow_service_pb2.GetRunRequest)]
    assert len(waits) == 2  # waited on the server, twice: RUNNING then COMPLETED
    assert all(r.wait and r.wait_timeout.ToNanoseconds() > 0 for r in waits)


async def test_trigger_by_name_gives_plain_json(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.runs["run-1"] = [
        run("run-1", types_pb2.RUN_STATUS_COMPLETED, result=types_pb2.Payload(json='{"a": [1]}'))
    ]
    assert await client.execute("orders.process", {"id": 1}) == {"a": [1]}
    request = service.requests[0]
    assert (request.workflow_name, request.workflow_version) == ("orders.process", "")
    assert request.input.json == '{"id":1}'
    await client.trigger("orders.process", None, version=2)
    assert service.requests[-1].workflow_version == "2"


async def test_trigger_checks_the_input(fake: tuple[FakeWorkflowService, Client]) -> None:
    _, client = fake
    with pytest.raises(PayloadError, match="input"):
        await client.trigger(process, {"id": "not a number"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes no input"):
        await client.trigger(no_input, 1)  # type: ignore[arg-type]
    handle = await client.trigger(process, {"id": 2})  # type: ignore[arg-type]  # dicts validate
    assert handle.run_id == "run-1"


async def test_failed_and_cancelled_runs_raise(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.runs["bad"] = [
        run(
            "bad",
            types_pb2.RUN_STATUS_FAILED,
            error=types_pb2.ErrorInfo(type="builtins.ValueError", message="no", traceback="tb"),
            failure_reason=types_pb2.FAILURE_REASON_WORKFLOW_ERROR,
        )
    ]
    service.runs["gone"] = [
        run("gone", types_pb2.RUN_STATUS_CANCELLED, cancel_reason="changed my mind")
    ]
    with pytest.raises(RunFailedError) as failed:
        await client.get_handle("bad", process).result()
    assert failed.value.error_type == "builtins.ValueError"
    assert failed.value.error_message == "no"
    assert failed.value.error_traceback == "tb"
    assert failed.value.failure_reason == "workflow_error"
    assert "builtins.ValueError: no" in str(failed.value)
    with pytest.raises(RunCancelledError, match="changed my mind") as cancelled:
        await client.get_handle("gone").result()
    assert cancelled.value.reason == "changed my mind"


async def test_result_timeout(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.runs["slow"] = [run("slow", types_pb2.RUN_STATUS_RUNNING)]
    with pytest.raises(TimeoutError, match="slow"):
        await client.get_handle("slow").result(timeout=0.05)


async def test_get_run_decodes_every_field(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    service.runs["r"] = [
        run(
            "r",
            types_pb2.RUN_STATUS_COMPLETED,
            workflow_name="w",
            workflow_version="2",
            input=types_pb2.Payload(json='{"x": 1}'),
            result=types_pb2.Payload(json="[1, 2]"),
            parent_run_id="p",
            create_time=stamp,
            start_time=stamp,
            dispatch_count=3,
        )
    ]
    info = await client.get_run("r")
    assert info == RunInfo(
        run_id="r",
        workflow_name="w",
        workflow_version="2",
        status=RunStatus.COMPLETED,
        input={"x": 1},
        result=[1, 2],
        error_type=None,
        error_message=None,
        error_traceback=None,
        parent_run_id="p",
        create_time=datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        start_time=datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        end_time=None,
        dispatch_count=3,
    )
    assert info.status is RunStatus.COMPLETED
    with pytest.raises(AttributeError):
        info.run_id = "x"  # type: ignore[misc]
    assert (await client.get_run("r")).input == {"x": 1}
    with pytest.raises(NotFoundError, match="no run missing"):
        await client.get_run("missing")


async def test_cancel(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    info = await client.cancel("r9", reason="because")
    assert (info.status, info.cancel_reason) == (RunStatus.CANCELLED, "because")
    service.errors["done"] = (grpc.StatusCode.FAILED_PRECONDITION, "run done already finished")
    with pytest.raises(sdk_errors.FailedPreconditionError, match="already finished") as exc:
        await client.cancel("done")
    assert exc.value.code == "FAILED_PRECONDITION"


async def test_list_runs_follows_pages(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.pages = [
        workflow_service_pb2.ListRunsResponse(
            runs=[run("a", types_pb2.RUN_STATUS_COMPLETED), run("b", types_pb2.RUN_STATUS_FAILED)],
            next_page_token="1",
        ),
        workflow_service_pb2.ListRunsResponse(runs=[run("c", types_pb2.RUN_STATUS_PENDING)]),
    ]
    after = datetime(2024, 1, 1, tzinfo=UTC)
    found = [
        info.run_id
        async for info in client.list_runs(
            workflow=process,
            statuses=[RunStatus.COMPLETED, "failed"],
            created_after=after,
            page_size=2,
        )
    ]
    assert found == ["a", "b", "c"]
    first, second = service.requests
    assert first.workflow_name == "orders.process"
    assert list(first.statuses) == [types_pb2.RUN_STATUS_COMPLETED, types_pb2.RUN_STATUS_FAILED]
    assert first.page_size == 2 and first.page_token == ""
    assert first.create_time_after.ToDatetime(tzinfo=UTC) == after
    assert not first.HasField("create_time_before")
    assert second.page_token == "1"
    with pytest.raises(ValueError, match="unknown run status"):
        async for _ in client.list_runs(statuses=["done"]):
            pass


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.NOT_FOUND, sdk_errors.NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, sdk_errors.InvalidArgumentError),
        (grpc.StatusCode.ALREADY_EXISTS, sdk_errors.AlreadyExistsError),
        (grpc.StatusCode.FAILED_PRECONDITION, sdk_errors.FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sdk_errors.ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, sdk_errors.ServerUnavailableError),
        (grpc.StatusCode.PERMISSION_DENIED, sdk_errors.PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, sdk_errors.UnauthenticatedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, StepdError),
    ],
)
def test_error_mapping(code: grpc.StatusCode, error: type[StepdError]) -> None:
    mapped = sdk_error(
        grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "why", None)
    )
    assert type(mapped) is error
    assert str(mapped) == "why"
    assert mapped.code == code.name


async def test_trigger_errors_are_mapped(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.errors["too.big"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "input over 2 MiB")
    with pytest.raises(sdk_errors.ResourceExhaustedError, match="2 MiB"):
        await client.trigger("too.big", "x")


async def test_unreachable_server() -> None:
    async with Client("127.0.0.1:1") as client:
        with pytest.raises(sdk_errors.ServerUnavailableError):
            await client.get_run("x")


async def test_closed_client_refuses_calls() -> None:
    client = Client("127.0.0.1:1")
    await client.close()
    with pytest.raises(StepdError, match="closed"):
        await client.get_run("x")


# -- signals and history ----------------------------------------------------------------


async def test_signal_sends_name_payload_and_request_id(
    fake: tuple[FakeWorkflowService, Client],
) -> None:
    service, client = fake
    await client.signal("r1", "approve", Order(5), request_id="once")
    await client.get_handle("r2").signal("reject")
    first, second = service.requests
    assert (first.run_id, first.name, first.payload.json, first.request_id) == (
        "r1",
        "approve",
        '{"id":5}',
        "once",
    )
    assert (second.run_id, second.name, second.payload.json, second.request_id) == (
        "r2",
        "reject",
        "null",
        "",
    )


async def test_signal_errors_are_mapped(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.errors["done"] = (grpc.StatusCode.FAILED_PRECONDITION, "run done has finished")
    service.errors["nope"] = (grpc.StatusCode.NOT_FOUND, "no run nope")
    with pytest.raises(sdk_errors.FailedPreconditionError, match="finished"):
        await client.signal("done", "approve")
    with pytest.raises(NotFoundError, match="no run nope"):
        await client.signal("nope", "approve")
    with pytest.raises(PayloadError):
        await client.signal("r", "approve", object())


async def test_publish_event_sends_name_payload_and_event_id(
    fake: tuple[FakeWorkflowService, Client],
) -> None:
    from stepd import PublishedEvent

    service, client = fake
    first = await client.publish_event("order.paid", Order(5), event_id="pay-5")
    again = await client.publish_event("order.paid", {"id": 5}, event_id="pay-5")
    bare = await client.publish_event("tick")
    assert first == PublishedEvent("pay-5", already_published=False, woken_run_ids=("r1", "r2"))
    assert again == PublishedEvent("pay-5", already_published=True, woken_run_ids=())
    assert bare.event_id == "assigned-1"
    sent = [(r.name, r.payload.json, r.event_id) for r in service.requests]
    assert sent == [
        ("order.paid", '{"id":5}', "pay-5"),
        ("order.paid", '{"id":5}', "pay-5"),
        ("tick", "null", ""),
    ]
    with pytest.raises(AttributeError):
        first.event_id = "other"  # type: ignore[misc]


async def test_publish_event_errors_are_mapped(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.errors[""] = (grpc.StatusCode.INVALID_ARGUMENT, "an event needs a name")
    with pytest.raises(sdk_errors.InvalidArgumentError, match="needs a name"):
        await client.publish_event("")
    with pytest.raises(PayloadError):
        await client.publish_event("x", object())


def event(sequence: int, kind: int, **fields: object) -> types_pb2.RunEvent:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    return types_pb2.RunEvent(sequence=sequence, type=kind, time=stamp, **fields)  # type: ignore[arg-type]


async def test_list_run_events_decodes_and_follows_pages(
    fake: tuple[FakeWorkflowService, Client],
) -> None:
    from stepd.history import RunEvent, RunEventType

    service, client = fake
    service.event_pages = [
        workflow_service_pb2.ListRunEventsResponse(
            events=[
                event(1, types_pb2.RUN_EVENT_TYPE_TRIGGERED),
                event(2, types_pb2.RUN_EVENT_TYPE_DISPATCHED, detail="host:1", attempt=3),
            ],
            next_page_token="1",
        ),
        workflow_service_pb2.ListRunEventsResponse(
            events=[
                event(
                    4,
                    types_pb2.RUN_EVENT_TYPE_STEP_FAILED,
                    key="charge",
                    attempt=1,
                    error=types_pb2.ErrorInfo(type="builtins.ValueError", message="no"),
                ),
                event(
                    5,
                    types_pb2.RUN_EVENT_TYPE_CUSTOM,
                    key="entry:1",
                    name="log",
                    payload=types_pb2.Payload(json='{"message": "hi"}'),
                ),
                event(9, 99),
            ]
        ),
    ]
    events = [e async for e in client.list_run_events("r1", page_size=2)]
    assert [e.type for e in events] == [
        RunEventType.TRIGGERED,
        RunEventType.DISPATCHED,
        RunEventType.STEP_FAILED,
        RunEventType.CUSTOM,
        RunEventType.UNKNOWN,
    ]
    assert [r.page_token for r in service.requests] == ["", "1"]
    assert {r.page_size for r in service.requests} == {2}
    assert events[0] == RunEvent(
        sequence=1, type=RunEventType.TRIGGERED, time=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert (events[1].detail, events[1].attempt, events[1].key) == ("host:1", 3, None)
    assert (events[2].key, events[2].error_type, events[2].error_message) == (
        "charge",
        "builtins.ValueError",
        "no",
    )
    assert (events[3].key, events[3].name, events[3].payload) == (
        "entry:1",
        "log",
        {"message": "hi"},
    )
    assert events[3].type == "custom"  # a StrEnum
    with pytest.raises(AttributeError):
        events[0].key = "x"  # type: ignore[misc]


async def test_list_run_events_of_an_unknown_run(
    fake: tuple[FakeWorkflowService, Client],
) -> None:
    service, client = fake
    service.errors["ghost"] = (grpc.StatusCode.NOT_FOUND, "no run ghost")
    with pytest.raises(NotFoundError):
        [e async for e in client.get_handle("ghost").events()]


async def test_execute_hook_sends_token_and_payload(
    fake: tuple[FakeWorkflowService, Client],
) -> None:
    service, client = fake
    assert await client.execute_hook("h1.abc", Order(5)) == "run-of-h1.abc"
    assert await client.execute_hook("h1.def") == "run-of-h1.def"
    sent = [(r.token, r.payload.json) for r in service.requests]
    assert sent == [("h1.abc", '{"id":5}'), ("h1.def", "null")]


async def test_execute_hook_errors_are_mapped(fake: tuple[FakeWorkflowService, Client]) -> None:
    service, client = fake
    service.errors["forged"] = (grpc.StatusCode.NOT_FOUND, "no hook has this token")
    service.errors["used"] = (grpc.StatusCode.FAILED_PRECONDITION, "already executed")
    service.errors[""] = (grpc.StatusCode.INVALID_ARGUMENT, "a token is required")
    with pytest.raises(NotFoundError, match="no hook"):
        await client.execute_hook("forged")
    with pytest.raises(sdk_errors.FailedPreconditionError, match="already executed"):
        await client.execute_hook("used", {"ok": True})
    with pytest.raises(sdk_errors.InvalidArgumentError):
        await client.execute_hook("")
    with pytest.raises(PayloadError):
        await client.execute_hook("h1.x", object())
