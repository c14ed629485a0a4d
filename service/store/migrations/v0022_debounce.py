"""Migration 22: debounce.

- ``runs.debounce_key``: the debounce key of a run of a workflow with
  debounce (NULL otherwise).
- ``ix_runs_workflow_name_debounce_key``: a key's pending debounced run, over
  debounced runs only.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "runs.debounce_key"


def upgrade(conn: Connection) -> None:
    """Add the column and its index."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN debounce_key TEXT"))
    conn.execute(
        text(
            "CREATE INDEX ix_runs_workflow_name_debounce_key ON runs "
            "(workflow_name, debounce_key) WHERE debounce_key IS NOT NULL"
        )
    )
