"""Migration 21: rate limits.

- ``rate_turns``: per rate limit and key, when its latest turn begins and the
  spacing between turns; a row whose next turn would begin in the past no
  longer matters and is deleted by a sweep.
- ``runs.rate_limit``, ``runs.rate_key``: the start rate limit and key a run
  took its turn under (NULL for a workflow without one).

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

DESCRIPTION = "rate_turns; runs.rate_limit, rate_key"


def upgrade(conn: Connection) -> None:
    """Create the table, add the two columns."""
    md = MetaData()
    Table(
        "rate_turns",
        md,
        Column("limit_name", Text, nullable=False),
        Column("limit_key", Text, nullable=False),
        Column("last_turn", BigInteger, nullable=False),
        Column("spacing_ms", BigInteger, nullable=False),
        PrimaryKeyConstraint("limit_name", "limit_key", name="pk_rate_turns"),
    ).create(conn)
    conn.execute(text("ALTER TABLE runs ADD COLUMN rate_limit TEXT"))
    conn.execute(text("ALTER TABLE runs ADD COLUMN rate_key TEXT"))
