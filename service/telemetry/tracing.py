"""OpenTelemetry spans of the server's RPCs (the ``stepd[otel]`` extra).

``RpcSpans`` opens one server span per unary call, a child of the caller's
``traceparent`` / ``tracestate`` metadata (a new trace without it), named
after the method, with the gRPC status code as an attribute (an error status
marks the span failed). ``current_trace`` is the context of the span being
handled, which ``Trigger`` stores with a run so the worker's spans are its
children. Imported only when tracing is on (``stepd serve --otel``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stepd.server.domain import NO_TRACE, TraceContext
from stepd.server.telemetry.rpc_context import Context, Metadata

_PROPAGATOR = TraceContextTextMapPropagator()
_CODES = {status.value[0]: status for status in grpc.StatusCode}
_NO_PROVIDER = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
#: Codes that are the caller's doing (OpenTelemetry's rule for server spans).
_NOT_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


class RpcSpans:
    """The spans of the server's calls (see the module docstring)."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("stepd.server")
        # Per method: the span's name and attributes, made once.
        self._methods: dict[str, tuple[str, dict[str, str]]] = {}

    def span(
        self, method: str, metadata: Metadata, context: Context
    ) -> _CallSpan | contextlib.nullcontext[None]:
        """The call's span, current while the handler runs (none while no tracer
        provider is installed: the caller's context then passes to the run)."""
        if isinstance(trace.get_tracer_provider(), _NO_PROVIDER):
            return _NO_SPAN
        known = self._methods.get(method)
        if known is None:
            service, _, name = method.lstrip("/").rpartition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            known = self._methods[method] = (f"{service}/{name}", attributes)
        parent = None
        carrier: dict[str, str] | None = None
        for key, value in metadata or ():
            if key in _TRACE_HEADERS and isinstance(value, str):
                if carrier is None:
                    carrier = {}
                carrier[key] = value
        if carrier is not None:
            parent = _PROPAGATOR.extract(carrier)
        span = self._tracer.start_span(
            known[0],
            context=parent,
            kind=SpanKind.SERVER,
            attributes=known[1],
            record_exception=False,
            set_status_on_exception=False,
        )
        return _CallSpan(span, context)


class _CallSpan:
    """Makes a call's span current while the handler runs, then ends it with
    the call's status code."""

    __slots__ = ("_context", "_span", "_token")

    def __init__(self, span: Any, context: Context) -> None:
        self._span = span
        self._context = context
        self._token: object = None

    def __enter__(self) -> Any:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        span = self._span
        try:
            code = _code(self._context, exc_type is not None)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code not in _NOT_SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]  # attach's token


def current_trace() -> TraceContext:
    """The W3C context of the current span (NO_TRACE outside one)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return NO_TRACE
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    parent = carrier.get("traceparent", "")
    return TraceContext(parent, carrier.get("tracestate", "")) if parent else NO_TRACE


def _code(context: Context, failed: bool) -> grpc.StatusCode:
    """The call's status code: the one set on the context, else UNKNOWN when the
    handler raised, else OK."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int) and code in _CODES:
        return _CODES[code]
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
