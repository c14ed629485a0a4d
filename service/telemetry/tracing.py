"""OpenTelemetry spans of the server's RPCs (the ``stepd[otel]`` extra).

``RpcSpans`` opens one server span per unary call, a child of the caller's
``traceparent`` / ``tracestate`` metadata (a new trace without it), named
after the method, with the gRPC status code as an attribute (an error status
marks the span failed). ``current_trace`` is the context of the span being
handled, which ``Trigger`` stores with a run so the worker's spans are its
children. Imported only when tracing is on (``stepd serve --otel``).

The span is not an SDK span: the call's ids, times and status go into a
``SpanRecord`` that a process of its own turns into the SDK's span and
exports (``span_relay.py``, ``span_export.py``). Here a span costs a few
microseconds. The head sampling decision is made here, by the sampler the
standard ``OTEL_TRACES_SAMPLER`` variables configure, as the SDK would.
"""

from __future__ import annotations

import contextvars
import random
import time
from typing import Any, NamedTuple, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind
from opentelemetry.trace.span import TraceFlags, TraceState

from stepd.server.api import trace_context
from stepd.server.domain import NO_TRACE, TraceContext
from stepd.server.telemetry.rpc_context import Context, Metadata
from stepd.server.telemetry.span_frames import SpanRecord

_CODES = {status.value[0]: status for status in grpc.StatusCode}
#: Codes that are the caller's doing (OpenTelemetry's rule for server spans).
_NOT_SERVER_ERRORS = frozenset(
    status.value[0]
    for status in (
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
    )
)
_SAMPLED = 1
_OK: int = grpc.StatusCode.OK.value[0]
_UNKNOWN: int = grpc.StatusCode.UNKNOWN.value[0]


def is_server_error(code: int) -> bool:
    """True when a call that ended with gRPC status ``code`` failed on the
    server's side (its span is marked failed)."""
    return code not in _NOT_SERVER_ERRORS


def code_name(code: int) -> str:
    """The name of gRPC status ``code`` (``UNAVAILABLE``)."""
    status = _CODES.get(code)
    return status.name if status is not None else str(code)


class SpanSink(Protocol):
    """Where finished spans go (``span_relay.SpanRelay``)."""

    def add(self, record: SpanRecord) -> None:
        """Take one finished span; never blocks."""
        ...


class _Current(NamedTuple):
    trace_id: int
    span_id: int
    flags: int
    tracestate: str


_CURRENT: contextvars.ContextVar[_Current | None] = contextvars.ContextVar(
    "stepd_span", default=None
)


class HeadSampler:
    """Whether a new span is recorded, as the SDK's configured sampler decides
    (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``; by default the
    caller's decision, and yes at a trace's root)."""

    def __init__(self) -> None:
        self._sampler = TracerProvider(shutdown_on_exit=False).sampler
        self._follows_parent = self._sampler is sampling.DEFAULT_ON

    def sample(self, name: str, trace_id: int, parent: _Current | None) -> tuple[bool, str]:
        """(recorded?, the span's tracestate)."""
        if self._follows_parent:
            if parent is None:
                return True, ""
            return bool(parent.flags & _SAMPLED), parent.tracestate
        context = None
        if parent is not None:
            given = TraceState.from_header([parent.tracestate]) if parent.tracestate else None
            caller = SpanContext(trace_id, parent.span_id, True, TraceFlags(parent.flags), given)
            context = trace.set_span_in_context(NonRecordingSpan(caller))
        result = self._sampler.should_sample(context, trace_id, name, SpanKind.SERVER)
        state = result.trace_state.to_header() if result.trace_state is not None else ""
        sampled: bool = result.decision.is_sampled()  # type: ignore[no-untyped-call]  # untyped in the SDK
        return sampled, state


class RpcSpans:
    """The spans of the server's calls (see the module docstring)."""

    def __init__(self, sink: SpanSink, sampler: HeadSampler | None = None) -> None:
        self._sink = sink
        self._sampler = sampler or HeadSampler()

    def span(self, method: str, metadata: Metadata, context: Context) -> _CallSpan:
        """The call's span, current while the handler runs."""
        parent = _parent(metadata)
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        sampled, state = self._sampler.sample(method, trace_id, parent)
        current = _Current(trace_id, random.getrandbits(64) or 1, _SAMPLED if sampled else 0, state)
        return _CallSpan(
            self._sink if sampled else None,
            method,
            current,
            parent.span_id if parent is not None else 0,
            context,
        )


def _parent(metadata: Metadata) -> _Current | None:
    """The caller's span from the call's ``traceparent`` / ``tracestate``."""
    found = trace_context.from_metadata(metadata)
    if not found:
        return None
    _version, trace_hex, span_hex, flags_hex = found.parent.split("-")[:4]
    return _Current(int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16), found.state)


class _CallSpan:
    """Makes a call's span current while the handler runs, then hands it to the
    sink (unless it is not sampled) with the call's status code."""

    __slots__ = ("_context", "_current", "_method", "_parent_id", "_sink", "_start", "_token")

    def __init__(
        self,
        sink: SpanSink | None,
        method: str,
        current: _Current,
        parent_id: int,
        context: Context,
    ) -> None:
        self._sink = sink
        self._method = method
        self._current = current
        self._parent_id = parent_id
        self._context = context
        self._start = 0
        self._token: contextvars.Token[_Current | None] | None = None

    def __enter__(self) -> None:
        self._token = _CURRENT.set(self._current)
        self._start = time.time_ns()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
        if self._sink is None:
            return
        current = self._current
        self._sink.add(
            SpanRecord(
                self._method,
                current.trace_id,
                current.span_id,
                self._parent_id,
                current.flags,
                current.tracestate,
                self._start,
                time.time_ns(),
                _code(self._context, exc_type is not None),
            )
        )


def current_trace() -> TraceContext:
    """The W3C context of the current call's span (NO_TRACE outside one)."""
    current = _CURRENT.get()
    if current is None:
        return NO_TRACE
    parent = f"00-{current.trace_id:032x}-{current.span_id:016x}-{current.flags:02x}"
    return TraceContext(parent, current.tracestate)


def _code(context: Context, failed: bool) -> int:
    """The call's status code: the one set on the context, else UNKNOWN when the
    handler raised, else OK."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    if isinstance(code, int) and code in _CODES:
        return int(code)
    return _UNKNOWN if failed else _OK
