"""Property-based fuzzing of both services against a real ``stepd serve``, on
each backend: generated, malformed and raw requests for every RPC of
WorkflowService and WorkerService (the PollTask stream's hello and commands
included) get only the codes the docs name for client input, never UNKNOWN
or INTERNAL; the server stays up and SERVING; ordinary runs complete after.

Each property is bounded by example count and by wall-clock time (about 30 s
per backend in all, to keep CI's run short); ``STEPD_FUZZ_SECONDS=600`` fuzzes
ten minutes per backend.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepd.v1 import types_pb2, worker_service_pb2, workflow_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.e2e.harness import Server, Stack
from tests.fuzz.strategies import messages

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]

WORKFLOW_SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
WORKER_SERVICE = worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"]
#: The codes the docs give a caller for its own mistakes (and OK).
CLIENT_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
#: What a command may be answered: never INTERNAL_ERROR for a worker's input.
COMMAND_STATUSES = {
    worker_service_pb2.COMMAND_STATUS_OK,
    worker_service_pb2.COMMAND_STATUS_DUPLICATE,
    worker_service_pb2.COMMAND_STATUS_LEASE_LOST,
    worker_service_pb2.COMMAND_STATUS_INVALID,
}
SECONDS = float(os.environ.get("STEPD_FUZZ_SECONDS", "30"))


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


FUZZ_WORKFLOW = "fuzz.w"


class Budget:
    """Counts a property's examples and collects its failures.

    Failures are collected, not raised: a raised one would make hypothesis
    replay and shrink the example against a server whose state has moved on.
    The first failures are reported with their requests.
    """

    def __init__(self) -> None:
        self.examples = 0
        self.failures: list[str] = []

    def failed(self, error: AssertionError, request: object) -> None:
        self.failures.append(f"{str(error)[:300]}\n    for {str(request)[:400]!r}")

    def check(self) -> None:
        assert not self.failures, "\n".join(self.failures[:5])


def within(seconds: float, cap: int, prop: Callable[[st.DataObject], None]) -> None:
    """Run a property for about ``seconds``: a few examples to time it, then as
    many more as fit (at most ``cap``)."""

    def run(examples: int) -> None:
        fuzz_settings(examples)(given(st.data())(prop))()

    started = time.monotonic()
    run(10)
    each = max((time.monotonic() - started) / 10, 0.001)
    left = seconds - (time.monotonic() - started)
    if left > each:
        run(min(cap, int(left / each)))


def check_code(code: grpc.StatusCode, what: str, details: str | None) -> None:
    assert code in CLIENT_CODES, f"{what}: {code.name} {details!r}"
    assert details is None or len(details) < 1200, f"{what}: a long message {len(details)}"


def call_unary(channel: grpc.Channel, method: Any, request: Any) -> None:
    """Call one RPC with ``request`` (a message, or raw bytes) and check the code."""
    path = f"/{WORKFLOW_SERVICE.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    serializer = None if isinstance(request, bytes) else type(request).SerializeToString
    rpc = channel.unary_unary(
        path, request_serializer=serializer, response_deserializer=response_class.FromString
    )
    try:
        rpc(request, timeout=15)
    except grpc.RpcError as error:
        check_code(error.code(), method.name, error.details())


#: How long a server stream (WatchRun) is read before the test ends it.
STREAM_SECONDS = 3


def call_server_stream(channel: grpc.Channel, method: Any, request: Any) -> None:
    """Call a server-streaming RPC (WatchRun) and check its code. A stream still
    open at the test's deadline must have answered first (a live run's watch
    sends its state at once); one that sent nothing is a hung stream."""
    path = f"/{WORKFLOW_SERVICE.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    serializer = None if isinstance(request, bytes) else type(request).SerializeToString
    rpc = channel.unary_stream(
        path, request_serializer=serializer, response_deserializer=response_class.FromString
    )
    received = 0
    try:
        for _ in rpc(request, timeout=STREAM_SECONDS):
            received += 1
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED and received:
            return  # a live stream that had answered, ended by the test
        check_code(error.code(), method.name, error.details())


def bounded_wait(request: Any) -> None:
    """GetRun and Trigger with wait=true may block up to the server's cap by
    design: keep it short."""
    if isinstance(request, wf.GetRunRequest | wf.TriggerRequest) and request.wait:
        timeout = request.wait_timeout
        valid = -315_576_000_000 <= timeout.seconds <= 315_576_000_000 and abs(timeout.nanos) < 1e9
        if not request.HasField("wait_timeout") or (valid and timeout.seconds >= 1):
            request.wait_timeout.seconds, request.wait_timeout.nanos = 0, 200_000_000


class RawStream:
    """A PollTask stream of raw requests on a blocking channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self.responses: queue.Queue[worker_service_pb2.PollTaskResponse | None] = queue.Queue()
        self.error: grpc.RpcError | None = None
        rpc = channel.stream_stream(
            f"/{WORKER_SERVICE.full_name}/PollTask",
            request_serializer=None,
            response_deserializer=worker_service_pb2.PollTaskResponse.FromString,
        )
        self._call = rpc(self._requests(), timeout=30)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[bytes]:
        while (item := self._outbox.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.responses.put(None)

    def send(self, raw: bytes) -> None:
        self._outbox.put(raw)

    def next(self, timeout: float) -> worker_service_pb2.PollTaskResponse | None:
        """The next response; None once the stream ended or after ``timeout``."""
        try:
            return self.responses.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """End our side and wait for the server to end the stream."""
        self._outbox.put(None)
        self._reader.join(20)
        assert not self._reader.is_alive(), "the server did not end the stream"
        if self.error is not None:
            check_code(self.error.code(), "PollTask", self.error.details())


def valid_hello(capacity: int = 4) -> worker_service_pb2.PollTaskRequest:
    return worker_service_pb2.PollTaskRequest(
        hello=worker_service_pb2.WorkerHello(
            worker_id="fuzzer",
            identity="fuzzer",
            workflows=[worker_service_pb2.WorkflowRegistration(name=FUZZ_WORKFLOW, version="1")],
            capacity=capacity,
        )
    )


@pytest.fixture
def fuzz_server(stack: Stack, database: str) -> Server:
    return stack.start_server(database)


@pytest.fixture
def channel(fuzz_server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        fuzz_server.address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as opened:
        yield opened


def fuzz_client_rpcs(channel: grpc.Channel, seconds: float) -> int:
    budget = Budget()
    methods = list(WORKFLOW_SERVICE.methods)

    def fuzz(data: st.DataObject) -> None:
        budget.examples += 1
        method = data.draw(st.sampled_from(methods))
        if data.draw(st.integers(0, 9)) == 0:
            request: Any = data.draw(st.binary(max_size=80))
        else:
            request = data.draw(messages(method.input_type))
            bounded_wait(request)
        try:
            call = call_server_stream if method.server_streaming else call_unary
            call(channel, method, request)
        except AssertionError as error:
            budget.failed(error, (method.name, request))

    within(seconds, 5000, fuzz)
    budget.check()
    return budget.examples


def fuzz_worker_stream(channel: grpc.Channel, seconds: float) -> int:
    budget = Budget()
    command_type = worker_service_pb2.WorkerCommand.DESCRIPTOR
    hello_type = worker_service_pb2.PollTaskRequest.DESCRIPTOR
    trigger = channel.unary_unary(
        f"/{WORKFLOW_SERVICE.full_name}/Trigger",
        request_serializer=wf.TriggerRequest.SerializeToString,
        response_deserializer=wf.TriggerResponse.FromString,
    )

    def fuzz(data: st.DataObject) -> None:
        budget.examples += 1
        sent: list[object] = []
        try:
            one_stream(data, sent)
        except AssertionError as error:
            budget.failed(error, sent)

    def one_stream(data: st.DataObject, sent: list[object]) -> None:
        # What is drawn never depends on the server's answers (hypothesis needs
        # the draws of an example to be the same when it runs it again).
        kind = data.draw(st.sampled_from(["raw", "any-first", "hello-then-commands"]))
        raw = data.draw(st.binary(min_size=1, max_size=80))
        firsts = [data.draw(messages(hello_type)) for _ in range(2)]
        commands: list[Any] = data.draw(st.lists(messages(command_type), min_size=1, max_size=4))
        leases = [(data.draw(st.booleans()), data.draw(st.integers(0, 3))) for _ in commands]
        garbage_after = data.draw(st.integers(0, 4)) == 0
        stream = RawStream(channel)
        if kind == "raw":
            sent.append(raw)
            stream.send(raw)
            stream.close()
            return
        if kind == "any-first":
            for message in firsts:
                sent.append(message)
                stream.send(message.SerializeToString())
            stream.close()
            return
        trigger(wf.TriggerRequest(workflow_name=FUZZ_WORKFLOW), timeout=10)
        stream.send(valid_hello().SerializeToString())
        tasks: list[worker_service_pb2.RunTask] = []
        deadline = time.monotonic() + 2
        while not tasks and time.monotonic() < deadline:
            response = stream.next(0.2)
            if response is not None:
                tasks += response.tasks
        for number, (command, (leased, pick)) in enumerate(
            zip(commands, leases, strict=True), start=1
        ):
            command.command_id = number
            if tasks and leased:  # under a real lease: the command reaches the store
                task = tasks[pick % len(tasks)]
                command.run_id, command.lease_id = task.run_id, task.lease_id
        sent.extend(commands)
        batch = worker_service_pb2.WorkerCommandBatch(commands=commands)
        stream.send(worker_service_pb2.PollTaskRequest(commands=batch).SerializeToString())
        if garbage_after:
            sent.append(raw)
            stream.send(raw)
        answered = 0
        deadline = time.monotonic() + 10
        while answered < len(commands) and time.monotonic() < deadline:
            response = stream.next(0.5)
            if response is None and stream.error is not None:
                break
            for result in response.results if response is not None else ():
                answered += 1
                assert result.status in COMMAND_STATUSES, (result.status, result.message)
                assert len(result.message) < 1200
        stream.close()
        if stream.error is None and not garbage_after:
            assert answered == len(commands), "commands went unanswered on a live stream"

    within(seconds, 1000, fuzz)
    budget.check()
    return budget.examples


def assert_serving(fuzz_server: Server, channel: grpc.Channel) -> None:
    assert fuzz_server.process.returncode is None, fuzz_server.process.log_tail()
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def ordinary_runs_complete(stack: Stack, fuzz_server: Server, channel: grpc.Channel) -> None:
    stack.start_worker(fuzz_server)
    trigger = channel.unary_unary(
        f"/{WORKFLOW_SERVICE.full_name}/Trigger",
        request_serializer=wf.TriggerRequest.SerializeToString,
        response_deserializer=wf.TriggerResponse.FromString,
    )
    get = channel.unary_unary(
        f"/{WORKFLOW_SERVICE.full_name}/GetRun",
        request_serializer=wf.GetRunRequest.SerializeToString,
        response_deserializer=wf.GetRunResponse.FromString,
    )
    started = [
        trigger(
            wf.TriggerRequest(workflow_name="e2e.square", input=types_pb2.Payload(json=str(i))),
            timeout=10,
        ).run.run_id
        for i in range(20)
    ]
    for i, run_id in enumerate(started):
        request = wf.GetRunRequest(run_id=run_id, wait=True)
        request.wait_timeout.seconds = 30
        run = get(request, timeout=40).run
        assert run.status == types_pb2.RUN_STATUS_COMPLETED, run
        assert run.result.json == str(i * i)


def test_fuzzed_requests_get_documented_codes_and_the_server_keeps_serving(
    stack: Stack, fuzz_server: Server, channel: grpc.Channel
) -> None:
    client_examples = fuzz_client_rpcs(channel, SECONDS * 0.6)
    assert_serving(fuzz_server, channel)
    stream_examples = fuzz_worker_stream(channel, SECONDS * 0.4)
    assert_serving(fuzz_server, channel)
    assert client_examples > 10 and stream_examples >= 10, (client_examples, stream_examples)
    ordinary_runs_complete(stack, fuzz_server, channel)
    assert_serving(fuzz_server, channel)
