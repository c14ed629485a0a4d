"""The server's RPC spans reach the collector through the span export process
(``span_relay``, ``span_export``): a real child process exporting over OTLP/HTTP
to a receiver in the test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepd.server.telemetry import span_relay
from stepd.server.telemetry.span_frames import SpanRecord
from stepd.server.telemetry.span_relay import SpanRelay
from tests.e2e.otlp_receiver import OtlpReceiver, exporting_to

TRIGGER = "/stepd.v1.WorkflowService/Trigger"
GET_RUN = "/stepd.v1.WorkflowService/GetRun"
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7
UNAVAILABLE, INVALID_ARGUMENT = 14, 3


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    started = OtlpReceiver()
    started.start()
    for name, value in exporting_to(started, "relay-test").items():
        monkeypatch.setenv(name, value)
    yield started
    started.stop()


def record(
    method: str, span_id: int, *, parent: int = 0, code: int = 0, state: str = ""
) -> SpanRecord:
    start = time.time_ns()
    trace_id = CALLER_TRACE if parent else span_id << 64 | span_id
    return SpanRecord(method, trace_id, span_id, parent, 1, state, start, start + 1_500_000, code)


def ignores_sigterm(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGTERM (its SigIgn mask, Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


async def ignoring_sigterm(pid: int) -> None:
    """Wait until process ``pid`` ignores SIGTERM (it does once it has started)."""
    for _ in range(600):
        if ignores_sigterm(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the span export process never ignored SIGTERM")


async def test_spans_arrive_with_the_servers_ids_times_and_status(
    receiver: OtlpReceiver,
) -> None:
    relay = SpanRelay("stepd")
    relay.add(record(TRIGGER, 0x11, parent=CALLER_SPAN, state="vendor=abc"))  # before start
    await relay.start()
    sent = [
        record(GET_RUN, 0x12, code=UNAVAILABLE),
        record(GET_RUN, 0x13, code=INVALID_ARGUMENT),
    ]
    for one in sent:
        relay.add(one)

    spans = await receiver.wait_for(lambda spans: len(spans) == 3)
    await relay.close()

    by_id = {span.span_id: span for span in spans}
    caller = by_id[f"{0x11:016x}"]
    assert caller.name == "stepd.v1.WorkflowService/Trigger" and caller.kind == 2
    assert (caller.trace_id, caller.parent_span_id) == (
        f"{CALLER_TRACE:032x}",
        f"{CALLER_SPAN:016x}",
    )
    assert caller.trace_state == "vendor=abc"
    assert caller.service == "relay-test"
    assert caller.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "stepd.v1.WorkflowService",
        "rpc.method": "Trigger",
        "rpc.grpc.status_code": 0,
    }
    failed, refused = by_id[f"{0x12:016x}"], by_id[f"{0x13:016x}"]
    assert failed.parent_span_id == "" and failed.trace_id == f"{0x12 << 64 | 0x12:032x}"
    assert (failed.start_ns, failed.end_ns) == (sent[0].start_ns, sent[0].end_ns)
    # A server error marks the span failed; a caller's mistake does not.
    assert (failed.status_code, refused.status_code) == (2, 0)
    assert refused.attributes["rpc.grpc.status_code"] == INVALID_ARGUMENT
    assert relay.dropped == 0


async def test_close_sends_what_the_process_still_holds(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child would batch for a minute: only its flush at the end sends them.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    relay = SpanRelay("stepd")
    await relay.start()
    for number in range(1, 101):
        relay.add(record(GET_RUN, number))
    await asyncio.sleep(0.5)
    assert receiver.received() == []

    await relay.close()

    assert len(receiver.received()) == 100


async def test_the_process_ignores_sigterm_and_ends_with_its_input(
    receiver: OtlpReceiver,
) -> None:
    relay = SpanRelay("stepd")
    await relay.start()
    assert relay.pid is not None
    await ignoring_sigterm(relay.pid)
    os.kill(relay.pid, signal.SIGTERM)  # as a service manager stopping the whole group
    relay.add(record(GET_RUN, 7))

    await relay.close()

    assert [span.span_id for span in receiver.received()] == [f"{7:016x}"]


async def test_a_process_that_died_drops_spans_and_says_so_once(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    relay = SpanRelay("stepd")
    await relay.start()
    assert relay.pid is not None
    os.kill(relay.pid, signal.SIGKILL)
    await asyncio.sleep(0.5)

    with caplog.at_level(logging.WARNING, logger="stepd.server"):
        for round_ in range(3):
            for number in range(span_relay.FLUSH_SPANS):
                relay.add(record(GET_RUN, round_ * 1000 + number + 1))
            await asyncio.sleep(0.05)
        await relay.close()

    assert relay.dropped >= span_relay.FLUSH_SPANS * 2
    dropping = [r.getMessage() for r in caplog.records if "dropping spans" in r.getMessage()]
    assert dropping == ["dropping spans: the span export process ended (exit status -9)"]


async def test_a_stalled_process_neither_blocks_the_server_nor_piles_up_its_spans(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(span_relay, "MAX_BACKLOG_BYTES", 256 * 1024)
    relay = SpanRelay("stepd")
    await relay.start()
    assert relay.pid is not None
    os.kill(relay.pid, signal.SIGSTOP)
    try:
        for number in range(1, 20_001):  # ~2.6 MB of frames, far past the pipe and the limit
            relay.add(record(GET_RUN, number, state="k=" + "v" * 64))
            if number % 1000 == 0:
                await asyncio.sleep(0)
        assert relay.dropped > 10_000
        with caplog.at_level(logging.WARNING, logger="stepd.server"):
            await asyncio.wait_for(relay.close(), span_relay.CLOSE_SECONDS + 5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(relay.pid, signal.SIGCONT)
    assert "did not finish within" in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(relay.pid, 0)  # ended and reaped
