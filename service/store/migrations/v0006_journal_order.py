"""Migration 6: the lease under which each journal entry was written.

Steps record the lease they were recorded under; met waits the run's lease
when they were met. Within one lease, steps come before the (at most one)
wait met after it, so (lease, kind, order) gives the journal's exact order.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "steps.lease_id and run_waits.met_lease_id, for the journal's order"


def upgrade(conn: Connection) -> None:
    """Add the two columns."""
    conn.execute(text("ALTER TABLE steps ADD COLUMN lease_id BIGINT"))
    conn.execute(text("ALTER TABLE run_waits ADD COLUMN met_lease_id BIGINT"))
