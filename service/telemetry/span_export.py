"""The span export process: ``python -m stepd.server.telemetry.span_export``.

``stepd serve --otel`` starts it (``span_relay.py``) and writes its finished
RPC spans to its standard input (``span_frames.py``). Here the OpenTelemetry
SDK turns them into spans with the server's ids, times and status, and
exports them as the standard environment variables say (``otel_setup.py``).
The SDK's span objects and the OTLP encoding cost about 60 µs a span; done
in the server they took that time from the one core its event loop runs on.

Arguments: ``SERVICE_NAME LOG_LEVEL LOG_FORMAT``. The process ignores SIGINT
and SIGTERM: a Ctrl-C in a terminal, or a service manager stopping the
server's whole group, reaches the server too, which then closes the pipe. At
the end of its input (the server closed it, or died) it sends what it still
holds and exits.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from stepd.server.telemetry import json_logs, otel_setup
from stepd.server.telemetry.span_frames import SpanRecord, decode
from stepd.server.telemetry.tracing import code_name, is_server_error

#: The instrumentation scope of the server's spans.
SCOPE = "stepd.server"


class GivenIds(IdGenerator):
    """Ids the server already chose: the next span takes ``trace_id`` and ``span_id``."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


class Replayer:
    """Makes the SDK span of each record."""

    def __init__(self, tracer: Any, ids: GivenIds) -> None:
        self._tracer = tracer
        self._ids = ids
        self._methods: dict[str, tuple[str, dict[str, str]]] = {}

    def emit(self, record: SpanRecord) -> None:
        """End the span ``record`` describes (sent to the exporters in batches)."""
        known = self._methods.get(record.method)
        if known is None:
            service, _, name = record.method.lstrip("/").rpartition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            known = self._methods[record.method] = (f"{service}/{name}", attributes)
        self._ids.trace_id = record.trace_id
        self._ids.span_id = record.span_id
        parent = None
        if record.parent_span_id:
            state = TraceState.from_header([record.tracestate]) if record.tracestate else None
            caller = SpanContext(
                record.trace_id,
                record.parent_span_id,
                is_remote=True,
                trace_flags=TraceFlags(record.flags),
                trace_state=state,
            )
            parent = trace.set_span_in_context(NonRecordingSpan(caller))
        span = self._tracer.start_span(
            known[0],
            context=parent,
            kind=SpanKind.SERVER,
            attributes=known[1],
            start_time=record.start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        span.set_attribute("rpc.grpc.status_code", record.code)
        if is_server_error(record.code):
            span.set_status(Status(StatusCode.ERROR, code_name(record.code)))
        span.end(end_time=record.end_ns)


def main(argv: list[str]) -> int:
    """Export the spans read from standard input until it ends."""
    service_name, level, log_format = argv
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    json_logs.configure(level, log_format)
    ids = GivenIds()
    # The server sampled each span already: every record it sends is kept.
    provider = otel_setup.tracer_provider(
        service_name, otel_setup.exporters(), sampler=sampling.ALWAYS_ON, id_generator=ids
    )
    replayer = Replayer(provider.get_tracer(SCOPE), ids)
    try:
        for batch in decode(sys.stdin.buffer):
            for record in batch:
                replayer.emit(record)
    finally:
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
