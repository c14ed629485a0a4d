"""OpenTelemetry traces end to end: a real ``stepd serve --otel`` and a real
``stepd-worker --otel`` export to an OTLP/HTTP receiver in the test; the run's
spans join the caller's trace, one span per executed step and none for a
replayed one, and a child run's spans are in its parent's trace."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from stepd import Client, RunStatus
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as pb
from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceStub
from tests.e2e import trace_workflows as tw
from tests.e2e.harness import ROOT, ManagedProcess, Server, Stack, read_marks, release
from tests.e2e.otlp_receiver import OtlpReceiver, Span, exporting_to
from tests.e2e.test_grpcurl import call
from tests.e2e.test_signals import wait_for_status
from tests.e2e.workflows import Job

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
FIELD_TRACE = "0af7651916cd43dd8448eb211c80319c"
FIELD_SPAN = "b7ad6b7169203331"
TRIGGER_SPAN = "stepd.v1.WorkflowService/Trigger"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver()
    started.start()
    yield started
    started.stop()


@pytest.fixture
def traced_server(receiver: OtlpReceiver, stack: Stack, database: str) -> Server:
    # The receiver is set up first so that it outlives the processes exporting to it.
    return stack.start_server(database, args=["--otel"], env=exporting_to(receiver, "test-server"))


@pytest.fixture
def traced_worker(receiver: OtlpReceiver, stack: Stack, traced_server: Server) -> ManagedProcess:
    return start_traced_worker(stack, traced_server, receiver)


def start_traced_worker(stack: Stack, server: Server, receiver: OtlpReceiver) -> ManagedProcess:
    # No run cache: a run resumed after its suspension is replayed from the top.
    return stack.start_worker(
        server,
        ["tests.e2e.trace_workflows"],
        args=["--otel", "--max-cached-runs", "0"],
        env=exporting_to(receiver, "test-worker"),
    )


def documented_trigger() -> dict[str, Any]:
    """The request of the grpcurl example in docs/observability.md's Traces section."""
    text = (ROOT / "docs" / "observability.md").read_text()
    traces = text[text.index("## Traces\n") : text.index("## Logs\n")]
    found = re.search(r"grpcurl -plaintext -d '(.*?)'", traces, flags=re.DOTALL)
    assert found, "the grpcurl example"
    return dict(json.loads(found[1].replace("\\\n", "")))


def of_run(spans: list[Span], run_id: str) -> list[Span]:
    return [
        s for s in spans if s.service == "test-worker" and s.attributes["stepd.run_id"] == run_id
    ]


def names(spans: list[Span]) -> Counter[str]:
    return Counter(s.name for s in spans)


def ended(run_id: str, outcome: str, runs: int = 1):
    """A condition: ``runs`` run spans of the run ended with ``outcome``."""

    def found(spans: list[Span]) -> bool:
        done = [
            s
            for s in of_run(spans, run_id)
            if s.name.startswith("run ") and s.attributes.get("stepd.outcome") == outcome
        ]
        return len(done) >= runs

    return found


async def test_a_run_joins_the_callers_trace_with_one_span_per_executed_step(
    receiver: OtlpReceiver, traced_server: Server, traced_worker: ManagedProcess
) -> None:
    caller = SpanContext(
        int(CALLER_TRACE, 16), int(CALLER_SPAN, 16), True, TraceFlags(TraceFlags.SAMPLED)
    )
    async with Client(traced_server.address) as client:
        # The SDK client sends the current span's context with Trigger.
        with trace.use_span(NonRecordingSpan(caller)):
            handle = await client.trigger(tw.steps, 1)
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
        await handle.signal("go")
        assert await handle.result(timeout=30) == 1
        async with grpc.aio.insecure_channel(traced_server.address) as channel:
            stored = await WorkflowServiceStub(channel).GetRun(
                pb.GetRunRequest(run_id=handle.run_id)
            )
    spans = await receiver.wait_for(
        lambda spans: (
            ended(handle.run_id, "completed")(spans) and trigger_span_arrived(spans, handle.run_id)
        )
    )
    server_span = next(s for s in spans if s.name == TRIGGER_SPAN and s.trace_id == CALLER_TRACE)
    assert server_span.service == "test-server"
    assert server_span.parent_span_id == CALLER_SPAN
    assert server_span.attributes["rpc.grpc.status_code"] == 0
    assert stored.run.trace_context.traceparent.split("-")[1:3] == [
        CALLER_TRACE,
        server_span.span_id,
    ]

    mine = of_run(spans, handle.run_id)
    assert {s.trace_id for s in mine} == {CALLER_TRACE}
    runs = [s for s in mine if s.name == "run e2e.trace.steps"]
    # Two attempts: up to the suspension, and the replay after the signal.
    assert sorted(s.attributes["stepd.outcome"] for s in runs) == ["completed", "suspended"]
    assert {s.parent_span_id for s in runs} == {server_span.span_id}
    assert sorted(s.attributes["stepd.attempt"] for s in runs) == [1, 2]
    # The replay ran first and second from the journal: they made no new span.
    steps = [s for s in mine if s.name.startswith("step ")]
    assert names(steps) == Counter({"step first": 1, "step second": 1, "step third": 1})
    by_attempt = {s.attributes["stepd.attempt"]: s.span_id for s in runs}
    for span in steps:
        assert span.attributes["stepd.workflow"] == "e2e.trace.steps"
        assert span.attributes["stepd.workflow_version"] == tw.steps.version
        assert span.attributes["stepd.step_key"] == span.name.removeprefix("step ")
        assert span.attributes["stepd.attempt"] == 1
        expected = by_attempt[2] if span.name == "step third" else by_attempt[1]
        assert span.parent_span_id == expected


async def test_a_child_runs_in_its_parents_trace_and_errors_are_recorded(
    receiver: OtlpReceiver, traced_server: Server, traced_worker: ManagedProcess
) -> None:
    # Triggered as docs/observability.md shows it, with grpcurl and the field.
    data = documented_trigger()
    data.update(workflow_name="e2e.trace.parent", input={"json": "5"})
    parent = (await asyncio.to_thread(call, traced_server, "Trigger", data))["run"]
    given = f"00-{FIELD_TRACE}-{FIELD_SPAN}-01"
    assert data["trace_context"]["traceparent"] == given
    assert parent["trace_context"] == {"traceparent": given}
    parent_id = parent["run_id"]
    async with grpc.aio.insecure_channel(traced_server.address) as channel:
        stub = WorkflowServiceStub(channel)
        failing = await stub.Trigger(
            pb.TriggerRequest(workflow_name="e2e.trace.fails", input=types_pb2.Payload(json="2"))
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Trigger(
                pb.TriggerRequest(
                    workflow_name="e2e.trace.parent",
                    trace_context=types_pb2.TraceContext(traceparent="00-xyz-01"),
                )
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "trace_context.traceparent" in (refused.value.details() or "")
        for run_id in (parent_id, failing.run.run_id):
            await stub.GetRun(pb.GetRunRequest(run_id=run_id, wait=True))
    spans = await receiver.wait_for(
        lambda spans: (
            ended(parent_id, "completed")(spans)
            and ended(failing.run.run_id, "failed")(spans)
            and trigger_span_arrived(spans, failing.run.run_id)
            and any(
                s.name == "run e2e.trace.child" and s.attributes.get("stepd.outcome") == "completed"
                for s in spans
            )
        )
    )
    parent_runs = [s for s in of_run(spans, parent_id) if s.name == "run e2e.trace.parent"]
    assert {s.trace_id for s in parent_runs} == {FIELD_TRACE}
    assert FIELD_SPAN in {s.parent_span_id for s in parent_runs}
    child_spans = [
        s
        for s in spans
        if s.service == "test-worker" and s.attributes.get("stepd.parent_run_id") == parent_id
    ]
    assert child_spans, "the child's run span"
    child_id = child_spans[0].attributes["stepd.run_id"]
    child_all = of_run(spans, child_id)
    assert {s.trace_id for s in child_all} == {FIELD_TRACE}
    # Started from the parent's first attempt, whose span is the child's parent.
    assert {s.parent_span_id for s in child_spans} <= {s.span_id for s in parent_runs}
    assert names(child_all)["step first"] == 1

    failed = of_run(spans, failing.run.run_id)
    (step,) = [s for s in failed if s.name == "step broken"]
    assert step.status_code == 2 and "exception" in step.events
    (run,) = [s for s in failed if s.name == "run e2e.trace.fails"]
    assert run.status_code == 2
    # A trigger without a trace context starts its trace at the server's span.
    (server_span,) = [s for s in spans if s.name == TRIGGER_SPAN and s.trace_id == run.trace_id]
    assert run.parent_span_id == server_span.span_id and server_span.parent_span_id == ""


def trigger_span_arrived(spans: list[Any], run_id: str) -> bool:
    """The server's Trigger span of the run's trace is among ``spans``."""
    traces = {s.trace_id for s in of_run(spans, run_id)}
    return any(s.name == TRIGGER_SPAN and s.trace_id in traces for s in spans)


async def test_no_step_span_twice_when_a_killed_workers_run_is_replayed(
    receiver: OtlpReceiver,
    stack: Stack,
    traced_server: Server,
    traced_worker: ManagedProcess,
    marks: Path,
    tag: str,
) -> None:
    async with Client(traced_server.address) as client:
        handle = await client.trigger(tw.crash, Job(tag=tag, value=1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while read_marks(marks, tag) != ["block"]:
            assert loop.time() < deadline, "the blocking step never started"
            await asyncio.sleep(0.05)
        # The first step's span is out before the crash (the blocking one never ends).
        await receiver.wait_for(lambda spans: "step first" in names(of_run(spans, handle.run_id)))
        traced_worker.kill()
        start_traced_worker(stack, traced_server, receiver)
        deadline = loop.time() + 60
        while read_marks(marks, tag) != ["block", "block"]:
            assert loop.time() < deadline, "the replay never reached the blocking step"
            await asyncio.sleep(0.05)
        release(marks, tag)
        assert await handle.result(timeout=30) == "released"
    spans = await receiver.wait_for(ended(handle.run_id, "completed"))
    mine = of_run(spans, handle.run_id)
    steps = [s for s in mine if s.name.startswith("step ")]
    # first ran once and was replayed; block's first attempt died with its worker.
    assert names(steps) == Counter({"step first": 1, "step block": 1})
    assert len({s.trace_id for s in mine}) == 1


async def test_head_sampling_keeps_a_trace_whole_or_drops_it_whole(
    receiver: OtlpReceiver, stack: Stack, database: str
) -> None:
    """docs/observability.md's sampling settings: the server decides at a trace's
    root and the worker follows the run's stored context."""
    sampling = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    server = stack.start_server(
        database, args=["--otel"], env={**exporting_to(receiver, "test-server"), **sampling}
    )
    stack.start_worker(
        server,
        ["tests.e2e.trace_workflows"],
        args=["--otel"],
        env={**exporting_to(receiver, "test-worker"), **sampling},
    )
    caller = SpanContext(
        int(CALLER_TRACE, 16), int(CALLER_SPAN, 16), True, TraceFlags(TraceFlags.SAMPLED)
    )
    async with Client(server.address) as client:
        dropped = await client.trigger(tw.child, 1)  # a new trace: sampled at ratio 0
        await dropped.result()
        with trace.use_span(NonRecordingSpan(caller)):  # a caller's sampled trace
            kept = await client.trigger(tw.child, 2)
        await kept.result()
    await receiver.wait_for(ended(kept.run_id, "completed"))
    await asyncio.sleep(1)  # anything else exported would have come by now
    spans = receiver.received()
    assert of_run(spans, dropped.run_id) == []
    assert names(of_run(spans, kept.run_id))["step first"] == 1
    assert {s.trace_id for s in spans} == {CALLER_TRACE}
