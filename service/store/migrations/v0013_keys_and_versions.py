"""Migration 13: API keys, pinned and retired workflow versions, who did what.

- ``api_keys``: one row per key; only the SHA-256 of the key is stored.
- ``workflow_pins``: the version an operator pinned as a workflow's current one.
- ``workflow_versions.retire_time``: a retired version is never current again.
- ``run_events.actor``, ``hooks.actor``, ``events.actor``: the id of the API key
  whose call caused a history entry (cancel, signal, hook, event).

(Number 12 is taken by another change; migrations apply by number, not in order.)

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, MetaData, Table, Text, text

DESCRIPTION = "api_keys, workflow_pins, workflow_versions.retire_time, actors in history"


def upgrade(conn: Connection) -> None:
    """Create the two tables and add the four columns."""
    md = MetaData()
    api_keys = Table(
        "api_keys",
        md,
        Column("key_id", Text, primary_key=True),
        Column("name", Text, nullable=False),
        Column("role", Text, nullable=False),
        Column("workflows", Text, nullable=False),
        Column("secret_hash", Text, nullable=False),
        Column("create_time", BigInteger, nullable=False),
        Column("expire_time", BigInteger),
        Column("revoke_time", BigInteger),
        Column("created_by", Text, nullable=False),
    )
    workflow_pins = Table(
        "workflow_pins",
        md,
        Column("workflow_name", Text, primary_key=True),
        Column("version", Text, nullable=False),
        Column("pin_time", BigInteger, nullable=False),
    )
    api_keys.create(conn)
    workflow_pins.create(conn)
    conn.execute(text("ALTER TABLE workflow_versions ADD COLUMN retire_time BIGINT"))
    conn.execute(text("ALTER TABLE run_events ADD COLUMN actor TEXT"))
    conn.execute(text("ALTER TABLE hooks ADD COLUMN actor TEXT"))
    conn.execute(text("ALTER TABLE events ADD COLUMN actor TEXT"))
