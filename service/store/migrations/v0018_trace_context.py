"""Migration 18: ``runs.trace_parent`` and ``runs.trace_state``.

The W3C trace context a run belongs to (``traceparent`` and ``tracestate``),
taken from the caller at Trigger or from the parent run for a child; NULL
when the run has none. The worker's spans for the run join that trace.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "runs.trace_parent, runs.trace_state"


def upgrade(conn: Connection) -> None:
    """Add the two columns (NULL on existing runs)."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN trace_parent TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN trace_state TEXT"))
