"""Migration 10: detached child runs and runs held for non-determinism.

``runs.detached`` is 1 for a child run that outlives its parent (NULL
otherwise). ``runs.held_error_type`` / ``held_error_message`` describe why a
worker held the run (its replay met a journal its code cannot have produced);
they are cleared when a worker takes the run again. Child runs are found from
their parent with the existing ``ix_runs_parent_run_id_seq`` index, and a
parent's child waits with ``ix_run_waits_kind_target_status``.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "runs.detached, runs.held_error_type and runs.held_error_message"


def upgrade(conn: Connection) -> None:
    """Add the three run columns."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN detached INTEGER"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN held_error_type TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN held_error_message TEXT"))
