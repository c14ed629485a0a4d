"""Values a database cannot store are refused the same way on both backends.

A NUL character in any string of any request is INVALID_ARGUMENT naming the
field (PostgreSQL keeps no NUL in text; SQLite would, so SQLite refuses it
too). A proto integer wider than the column it reaches is INVALID_ARGUMENT or,
inside a worker command, an INVALID result. Both are walked over the
contract's messages, so a field added later is covered without a new test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from stepd.v1 import admin_service_pb2, types_pb2, worker_service_pb2, workflow_service_pb2
from tests.server.conftest import Harness

WORKFLOW_SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]
NUL = "a\x00b"
#: Nested messages deeper than this are not walked (the contract nests 3 deep).
MAX_DEPTH = 4
_UNSIGNED = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64)
_INTEGERS = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
)
_WIDEST = {
    FieldDescriptor.TYPE_UINT32: 2**32 - 1,
    FieldDescriptor.TYPE_FIXED32: 2**32 - 1,
    FieldDescriptor.TYPE_UINT64: 2**64 - 1,
    FieldDescriptor.TYPE_FIXED64: 2**64 - 1,
    FieldDescriptor.TYPE_INT32: 2**31 - 1,
    FieldDescriptor.TYPE_SINT32: 2**31 - 1,
    FieldDescriptor.TYPE_INT64: 2**63 - 1,
    FieldDescriptor.TYPE_SINT64: 2**63 - 1,
}

Path = tuple[FieldDescriptor, ...]


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def field_paths(descriptor: Any, types: tuple[int, ...], depth: int = 0) -> Iterator[Path]:
    """Every path to a field of one of ``types`` in ``descriptor``'s messages."""
    for field in descriptor.fields:
        nested: Descriptor | None = field.message_type
        if field.type in types:
            yield (field,)
        elif nested is not None and depth < MAX_DEPTH:
            if nested.GetOptions().map_entry or nested.full_name.startswith("google.protobuf."):
                continue
            for rest in field_paths(nested, types, depth + 1):
                yield (field, *rest)


def dotted(path: Path) -> str:
    return ".".join(f.name for f in path)


def with_value(message: Message, path: Path, value: Any) -> Message:
    """A copy of ``message`` with the field at ``path`` set to ``value``."""
    copy = type(message)()
    copy.CopyFrom(message)
    target = copy
    for field in path[:-1]:
        container = getattr(target, field.name)
        target = container.add() if _is_repeated(field) else container
    last = path[-1]
    if _is_repeated(last):
        getattr(target, last.name).append(value)
    else:
        setattr(target, last.name, value)
    return copy


def request_class(service: ServiceDescriptor, name: str) -> type[Message]:
    return message_factory.GetMessageClass(service.methods_by_name[name].input_type)


async def call(harness: Harness, service: ServiceDescriptor, name: str, request: Message) -> None:
    method = service.methods_by_name[name]
    response = message_factory.GetMessageClass(method.output_type)
    rpc = harness.channel.unary_unary(
        f"/{service.full_name}/{name}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response.FromString,
    )
    await rpc(request, timeout=20)


#: Values that pass the other checks, for string fields with these names.
PLAUSIBLE = {"json": "{}", "role": "client", "cron": "* * * * *", "time_zone": "UTC"}
#: Left empty: a made-up value is refused for another reason first.
LEFT_EMPTY = {"encoding", "page_token", "token"}


def plausible(cls: type[Message], but: Path, run_id: str) -> Message:
    """A ``cls`` request whose strings (all but ``but``) hold plausible values."""
    request = cls()
    for path in field_paths(cls.DESCRIPTOR, (FieldDescriptor.TYPE_STRING,)):
        name = path[-1].name
        if path == but or name in LEFT_EMPTY or any(_is_repeated(f) for f in path):
            continue
        value = run_id if name == "run_id" else PLAUSIBLE.get(name, "x1")
        request = with_value(request, path, value)
    return request


async def test_a_nul_in_any_request_string_is_invalid_argument_naming_the_field(
    harness: Harness,
) -> None:
    run_id = await harness.trigger("nul.w")
    wrong: list[str] = []
    for service in (WORKFLOW_SERVICE, ADMIN_SERVICE):
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            cls = message_factory.GetMessageClass(method.input_type)
            for path in field_paths(cls.DESCRIPTOR, (FieldDescriptor.TYPE_STRING,)):
                request = with_value(plausible(cls, path, run_id), path, NUL)
                where = f"{method.name} {dotted(path)}"
                try:
                    await call(harness, service, method.name, request)
                except grpc.aio.AioRpcError as exc:
                    details = exc.details() or ""
                    if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT or "NUL" not in details:
                        wrong.append(f"{where}: {exc.code().name} {details[:120]!r}")
                else:
                    wrong.append(f"{where}: OK")
    assert not wrong, "\n".join(wrong)


INVALID = worker_service_pb2.COMMAND_STATUS_INVALID
LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST
#: A command of each kind the worker may send, valid but for the walked field.
COMMANDS: dict[str, Message] = {
    "record_step": worker_service_pb2.RecordStepCommand(
        step=types_pb2.StepRecord(
            step_key="s", attempt=1, error=types_pb2.ErrorInfo(type="E", message="m", attempt=1)
        )
    ),
    "fail_run": worker_service_pb2.FailRunCommand(
        error=types_pb2.ErrorInfo(type="E", message="m", attempt=1)
    ),
    "hold_run": worker_service_pb2.HoldRunCommand(
        error=types_pb2.ErrorInfo(type="E", message="m", attempt=1)
    ),
    "start_step": worker_service_pb2.StartStepCommand(
        step_key="s", attempt=1, timeout=duration_pb2.Duration(seconds=5)
    ),
}


async def test_integers_wider_than_their_columns_are_refused(harness: Harness) -> None:
    """Every integer of every worker command, at the widest its proto type
    allows: an INVALID result (or, for the lease, LEASE_LOST), never a loop."""
    cases: list[tuple[str, Path, int]] = []
    for kind, command in COMMANDS.items():
        for path in field_paths(command.DESCRIPTOR, _INTEGERS):
            cases.append((kind, path, _WIDEST[path[-1].type]))
    assert len(cases) >= 5, cases
    worker = harness.worker("wide.w", capacity=1)
    wrong: list[str] = []
    for kind, path, value in cases:
        command = COMMANDS[kind]
        command = with_value(command, path, value)
        run_id = await harness.trigger("wide.w")
        task = await worker.next_task()
        assert task.run_id == run_id
        result = await worker.send(task, **{kind: command})
        where = f"{kind}.{dotted(path)} = {value}"
        if result.status != INVALID or "at most" not in result.message:
            wrong.append(f"{where}: {result.status} {result.message[:120]!r}")
        run = await harness.get(run_id)
        if run.dispatch_count != 1:
            wrong.append(f"{where}: dispatched {run.dispatch_count} times")
        if run.status == types_pb2.RUN_STATUS_RUNNING:  # start_step leaves it running
            await worker.complete(task, "1")
    # A lease id past the column's width is simply not this worker's lease.
    run_id = await harness.trigger("wide.w")
    task = await worker.next_task()
    wide = worker_service_pb2.RunTask()
    wide.CopyFrom(task)
    wide.lease_id = 2**64 - 1
    result = await worker.complete(wide, "1")
    assert result.status == LEASE_LOST, result
    assert (await worker.complete(task, "1")).status == worker_service_pb2.COMMAND_STATUS_OK
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("size", [2**31, 2**32 - 1])
async def test_a_step_attempt_past_the_column_is_invalid_and_does_not_loop(
    harness: Harness, size: int
) -> None:
    worker = harness.worker("attempt.w", capacity=1)
    run_id = await harness.trigger("attempt.w")
    task = await worker.next_task()
    step = types_pb2.StepRecord(step_key="s", attempt=size, result=types_pb2.Payload(json="1"))
    result = await worker.send(task, record_step=worker_service_pb2.RecordStepCommand(step=step))
    assert result.status == INVALID, result
    run = await harness.get(run_id, wait=True)
    assert run.status == types_pb2.RUN_STATUS_FAILED, run
    assert run.dispatch_count == 1
