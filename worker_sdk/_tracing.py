"""Spans of runs and steps, through OpenTelemetry when it is installed.

stepd uses only the OpenTelemetry *API*: an application (or ``stepd-worker
--otel``, see ``_otel_setup.py``) decides where spans go by installing a tracer
provider; until one is installed no span is made. Without the
``opentelemetry-api`` package (``pip install 'stepd[otel]'``), every function
here does nothing.

- ``run_span``: one span per run attempt a worker executes (the run task), a
  child of the trace context stored with the run (none: a new trace).
- ``step_span``: one span per step attempt executed (a step replayed from the
  journal makes none), a child of the run's span.
- ``current_context``: the W3C context of the current span, for a trigger or a
  child run.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from functools import cache
from typing import Any

from stepd.v1 import types_pb2, worker_service_pb2

TRACER_NAME = "stepd"


@cache
def _otel() -> Any:
    """The OpenTelemetry API's pieces, or None when it is not installed (imported
    once, at the first span)."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return _Otel(trace, context, TraceContextTextMapPropagator())


class _Otel:
    def __init__(self, trace: Any, context: Any, propagator: Any) -> None:
        self.trace = trace
        self.context = context
        self.propagator = propagator
        self._no_provider = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._provider: Any = None
        self._tracer: Any = None

    def tracer(self) -> Any:
        """The tracer of the installed provider; None while none is installed (the
        API's spans would record nothing, and cost tens of microseconds each)."""
        provider = self.trace.get_tracer_provider()
        if provider is not self._provider:
            self._provider = provider
            no_spans = isinstance(provider, self._no_provider)
            self._tracer = None if no_spans else provider.get_tracer(TRACER_NAME)
        return self._tracer


def available() -> bool:
    """True when the OpenTelemetry API is installed."""
    return _otel() is not None


#: What ``run_span`` and ``step_span`` return while no span is made.
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def _tracer() -> Any:
    otel = _otel()
    return otel.tracer() if otel is not None else None


def run_span(task: worker_service_pb2.RunTask) -> AbstractContextManager[Any]:
    """The span of one run attempt, current for the block; yields it (None
    without OpenTelemetry or a tracer provider). Record the run's failure with
    ``failed``."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    otel = _otel()
    parent = None
    if task.trace_context.traceparent:
        carrier = {"traceparent": task.trace_context.traceparent}
        if task.trace_context.tracestate:
            carrier["tracestate"] = task.trace_context.tracestate
        parent = otel.propagator.extract(carrier)
    attributes = {
        "stepd.run_id": task.run_id,
        "stepd.workflow": task.workflow_name,
        "stepd.workflow_version": task.workflow_version,
        "stepd.attempt": task.dispatch_count,
    }
    if task.parent_run_id:
        attributes["stepd.parent_run_id"] = task.parent_run_id
    span = tracer.start_span(
        f"run {task.workflow_name}",
        context=parent,
        kind=otel.trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
    return _Current(otel, span)


def step_span(
    run_id: str, workflow: str, version: str, key: str, attempt: int
) -> AbstractContextManager[Any]:
    """The span of one step attempt executed, current for the block (its body's own
    spans are its children); yields it (None without OpenTelemetry or a provider)."""
    tracer = _tracer()
    if tracer is None:
        return _NO_SPAN
    span = tracer.start_span(
        f"step {key}",
        attributes={
            "stepd.run_id": run_id,
            "stepd.workflow": workflow,
            "stepd.workflow_version": version,
            "stepd.step_key": key,
            "stepd.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    )
    return _Current(_otel(), span)


class _Current(AbstractContextManager[Any]):
    """Makes ``span`` current for the block and ends it after (what the API's
    ``start_as_current_span`` does, without its generator-based wrapper)."""

    __slots__ = ("_otel", "_span", "_token")

    def __init__(self, otel: Any, span: Any) -> None:
        self._otel = otel
        self._span = span
        self._token: Any = None

    def __enter__(self) -> Any:
        otel = self._otel
        self._token = otel.context.attach(otel.trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *exc: object) -> None:
        try:
            self._span.end()
        finally:
            self._otel.context.detach(self._token)


def failed(span: Any, error: BaseException) -> None:
    """Record ``error`` on ``span`` and mark the span failed (nothing for None)."""
    otel = _otel()
    if span is None or otel is None:
        return
    span.record_exception(error)
    span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, f"{type(error).__name__}"))


def current_context() -> types_pb2.TraceContext | None:
    """The W3C trace context of the current span; None without one."""
    otel = _otel()
    if otel is None or not otel.trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    otel.propagator.inject(carrier)
    if "traceparent" not in carrier:
        return None
    return types_pb2.TraceContext(
        traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate", "")
    )
