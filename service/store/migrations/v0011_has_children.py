"""Migration 11: ``runs.has_children``.

1 once a run started a child run (NULL otherwise), set in the transaction
that creates the child. A run that ends looks for attached children to cancel
only when it is set, instead of querying on every run's end. Runs that
started children before this migration get it from their children's
``parent_run_id``.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "runs.has_children"


def upgrade(conn: Connection) -> None:
    """Add the column and set it on every run that has a child."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN has_children INTEGER"))
    conn.execute(
        text(
            "UPDATE runs SET has_children = 1 WHERE run_id IN "
            "(SELECT parent_run_id FROM runs WHERE parent_run_id IS NOT NULL)"
        )
    )
