"""Migration 20: priorities, and the flow-control settings workflows declare.

- ``runs.priority``: among ready runs a higher priority is handed out first
  (NULL: 0).
- ``workflow_flow``: each workflow's declared flow-control settings as a JSON
  object (its default priority; later migrations' settings go into the same
  object, so they need no new column here).

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, MetaData, Table, Text, text

DESCRIPTION = "runs.priority; workflow_flow"


def upgrade(conn: Connection) -> None:
    """Add the column and create the table."""
    md = MetaData()
    Table(
        "workflow_flow",
        md,
        Column("workflow_name", Text, primary_key=True),
        Column("settings_json", Text, nullable=False),
        Column("update_time", BigInteger, nullable=False),
    ).create(conn)
    conn.execute(text("ALTER TABLE runs ADD COLUMN priority INTEGER"))
