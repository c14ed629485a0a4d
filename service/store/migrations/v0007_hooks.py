"""Migration 7: hooks and the database's secret for hook tokens.

Frozen once released.
"""

from __future__ import annotations

import secrets

from sqlalchemy import BigInteger, Column, Connection, MetaData, Table, Text

DESCRIPTION = "server_secrets (hook key), hooks (executions by token hash)"


def upgrade(conn: Connection) -> None:
    """Create the tables and the hook key (random, 256 bits)."""
    md = MetaData()
    server_secrets = Table(
        "server_secrets",
        md,
        Column("name", Text, primary_key=True),
        Column("value", Text, nullable=False),
    )
    hooks = Table(
        "hooks",
        md,
        Column("token_hash", Text, primary_key=True),
        Column("run_id", Text, nullable=False),
        Column("wait_key", Text, nullable=False),
        Column("payload_json", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("execute_time", BigInteger, nullable=False),
    )
    server_secrets.create(conn)
    hooks.create(conn)
    conn.execute(server_secrets.insert().values(name="hook_key", value=secrets.token_hex(32)))
