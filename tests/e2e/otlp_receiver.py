"""A tiny OTLP/HTTP trace receiver for tests: it keeps every span exported to it.

Real ``stepd serve --otel`` and ``stepd-worker --otel`` processes export to it
with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set to ``receiver.endpoint``.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
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


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """Serves POST /v1/traces on a free loopback port; ``spans`` holds what came."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.endpoint = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
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
                    self.spans.append(
                        Span(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            events=tuple(event.name for event in span.events),
                        )
                    )
        answer = trace_service_pb2.ExportTraceServiceResponse()
        return web.Response(body=answer.SerializeToString(), content_type="application/x-protobuf")

    async def wait_for(
        self, found: Callable[[list[Span]], bool], within: float = 60.0
    ) -> list[Span]:
        """Wait until ``found(spans)`` holds; the spans then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not found(self.spans):
            if loop.time() > deadline:
                names = sorted((s.service, s.name) for s in self.spans)
                raise AssertionError(f"the spans expected did not come; got {names}")
            await asyncio.sleep(0.1)
        return list(self.spans)


def exporting_to(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    """The environment of a process that exports its spans to ``receiver`` soon."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
