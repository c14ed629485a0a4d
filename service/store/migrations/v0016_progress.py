"""Migration 16: run progress.

- ``runs.progress_json``: the latest value a workflow reported with
  ``ctx.set_progress`` (NULL until it reports one).
- ``ux_run_events_progress_key``: a progress entry is stored once per
  (run, key), like a custom entry, so a replay that reports it again changes
  nothing.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "runs.progress_json, progress entries once per key"


def upgrade(conn: Connection) -> None:
    """Add the column and the partial unique index."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN progress_json TEXT"))
    conn.execute(
        text(
            "CREATE UNIQUE INDEX ux_run_events_progress_key ON run_events (run_id, key) "
            "WHERE type = 'progress'"
        )
    )
