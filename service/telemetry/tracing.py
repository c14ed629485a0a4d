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
from collections.abc import Iterator
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stepd.server.domain import NO_TRACE, TraceContext
from stepd.server.telemetry.rpc_context import Context, Metadata

_PROPAGATOR = TraceContextTextMapPropagator()
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

    @contextlib.contextmanager
    def span(self, method: str, metadata: Metadata, context: Context) -> Iterator[Any]:
        """The call's span, current while the handler runs."""
        carrier = {
            name: value
            for name, value in metadata or ()
            if name in ("traceparent", "tracestate") and isinstance(value, str)
        }
        service, _, name = method.lstrip("/").rpartition("/")
        with self._tracer.start_as_current_span(
            f"{service}/{name}",
            context=_PROPAGATOR.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            failed = False
            try:
                yield span
            except BaseException:
                failed = True
                raise
            finally:
                code = _code(context, failed)
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code not in _NOT_SERVER_ERRORS:
                    span.set_status(Status(StatusCode.ERROR, code.name))


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
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
