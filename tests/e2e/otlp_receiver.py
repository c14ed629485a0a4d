"""A tiny OTLP/HTTP trace receiver for tests: it keeps every span exported to it.

Real ``stepd serve --otel`` and ``stepd-worker --otel`` processes export to it
with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set to ``receiver.endpoint``.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass(frozen=True)
class Span:
    """One exported span, ids as hex."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any] = field(hash=False)
    status_code: int  # 0 unset, 1 ok, 2 error
    events: tuple[str, ...]
    trace_state: str = ""
    start_ns: int = 0
    end_ns: int = 0
    kind: int = 0  # 2 server


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """Serves POST /v1/traces on a free loopback port, in a thread of its own (so
    that it answers while the test's event loop waits for processes to stop);
    ``spans`` holds what came."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def add(self, message: Any) -> None:
        """Keep the spans of one ExportTraceServiceRequest."""
        found = []
        for resource_spans in message.resource_spans:
            service = next(
                (
                    _value(attr.value)
                    for attr in resource_spans.resource.attributes
                    if attr.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        Span(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            events=tuple(event.name for event in span.events),
                            trace_state=span.trace_state,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            kind=span.kind,
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def received(self) -> list[Span]:
        """The spans so far."""
        with self._lock:
            return list(self.spans)

    async def wait_for(
        self, found: Callable[[list[Span]], bool], within: float = 60.0
    ) -> list[Span]:
        """Wait until ``found(spans)`` holds; the spans then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not found(self.received()):
            if loop.time() > deadline:
                names = sorted((s.service, s.name) for s in self.spans)
                raise AssertionError(f"the spans expected did not come; got {names}")
            await asyncio.sleep(0.1)
        return self.received()


def exporting_to(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    """The environment of a process that exports its spans to ``receiver`` soon."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
