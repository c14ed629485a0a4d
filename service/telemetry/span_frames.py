"""What the server sends its span export process: frames of finished RPC spans.

A span is a ``SpanRecord`` tuple of plain values; a frame is a batch of them,
``marshal``-encoded (both ends run the same Python), after its length as 4
big-endian bytes. Only the server writes the pipe and only its own child
reads it.
"""

from __future__ import annotations

import marshal
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

#: Bytes of a frame's length prefix.
LENGTH_BYTES = 4


class SpanRecord(NamedTuple):
    """One finished server span."""

    method: str
    """The full method: ``/stepd.v1.WorkflowService/Trigger``."""
    trace_id: int
    span_id: int
    parent_span_id: int
    """The caller's span (0: the span starts its trace)."""
    flags: int
    """The W3C trace flags (1: sampled)."""
    tracestate: str
    start_ns: int
    end_ns: int
    code: int
    """The call's gRPC status code (0: OK)."""


def encode(records: list[SpanRecord]) -> bytes:
    """One frame holding ``records``."""
    body = marshal.dumps([tuple(record) for record in records])
    return len(body).to_bytes(LENGTH_BYTES, "big") + body


def decode(stream: BinaryIO) -> Iterator[list[SpanRecord]]:
    """The frames read from ``stream`` until it ends (a frame cut short ends it too)."""
    while True:
        head = stream.read(LENGTH_BYTES)
        if len(head) < LENGTH_BYTES:
            return
        body = stream.read(int.from_bytes(head, "big"))
        try:
            batch = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            return
        yield [SpanRecord(*values) for values in batch]
