"""W3C trace contexts from requests: the ``trace_context`` field or the call's
``traceparent`` / ``tracestate`` metadata (https://www.w3.org/TR/trace-context/).

Only the shape is checked (version 00 and later, ids in lower-case hex, not all
zeros); nothing here needs OpenTelemetry. A malformed field is INVALID_ARGUMENT;
malformed metadata is ignored, as the W3C rules ask of a receiver.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from stepd.server.domain import NO_TRACE, TraceContext
from stepd.server.engine.errors import InvalidArgument
from stepd.v1 import types_pb2

#: The longest tracestate kept (the W3C rules ask receivers to keep at least 512).
MAX_TRACESTATE = 512

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def valid_traceparent(text: str) -> bool:
    """True when ``text`` is a W3C traceparent this server accepts."""
    found = _TRACEPARENT.fullmatch(text)
    if found is None:
        return False
    version, trace_id, span_id, _flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return False
    return trace_id != "0" * 32 and span_id != "0" * 16


def from_message(msg: types_pb2.TraceContext, field: str) -> TraceContext:
    """The TraceContext of a request field; INVALID_ARGUMENT when it is malformed."""
    if not msg.traceparent:
        if msg.tracestate:
            raise InvalidArgument(f"{field}.tracestate needs {field}.traceparent")
        return NO_TRACE
    if not valid_traceparent(msg.traceparent):
        raise InvalidArgument(
            f"{field}.traceparent is not a W3C traceparent "
            "(00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
        )
    if len(msg.tracestate) > MAX_TRACESTATE:
        raise InvalidArgument(f"{field}.tracestate is longer than {MAX_TRACESTATE} characters")
    return TraceContext(msg.traceparent, msg.tracestate)


def from_metadata(metadata: Iterable[Any] | None) -> TraceContext:
    """The TraceContext in a call's metadata; NO_TRACE when absent or malformed
    (a tracestate too long is dropped, the traceparent kept). ``metadata``: the
    call's (name, value) pairs."""
    parent = state = ""
    for name, value in metadata or ():
        if not isinstance(value, str):
            continue
        if name == "traceparent":
            parent = value.strip()
        elif name == "tracestate":
            state = value.strip()
    if not valid_traceparent(parent):
        return NO_TRACE
    return TraceContext(parent, state if len(state) <= MAX_TRACESTATE else "")


def to_message(trace: TraceContext) -> types_pb2.TraceContext | None:
    """A TraceContext message, or None when the run is in no trace."""
    if not trace:
        return None
    return types_pb2.TraceContext(traceparent=trace.parent, tracestate=trace.state)
