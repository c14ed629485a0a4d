"""Migration 2: an index for finding runs whose lease has expired.

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "index runs (status, lease_expires_at) for the lease expiry sweep"


def upgrade(conn: Connection) -> None:
    """Create the index."""
    conn.execute(
        text("CREATE INDEX ix_runs_status_lease_expires_at ON runs (status, lease_expires_at)")
    )
