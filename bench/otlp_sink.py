"""An OTLP/HTTP trace receiver for the benchmark, in a process of its own.

``python bench/otlp_sink.py`` listens on a free loopback port, prints
``listening on PORT`` and answers every ``POST /v1/traces`` with 200 after
counting the spans in it; ``GET /spans`` answers with the count so far. It
stands in for an OpenTelemetry collector, so that ``bench/run.py --telemetry``
measures servers and workers that really encode and send every span (a
receiver in the bench's own process would take the client's CPU).
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class _Counter:
    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        count = sum(
            len(scope.spans) for batch in request.resource_spans for scope in batch.scope_spans
        )
        with self.lock:
            self.spans += count


def serve() -> None:
    """Serve until killed."""
    counter = _Counter()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            counter.add(body)
            self._answer(b"", "application/x-protobuf")

        def do_GET(self) -> None:
            with counter.lock:
                count = counter.spans
            self._answer(str(count).encode(), "text/plain")

        def _answer(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve()
