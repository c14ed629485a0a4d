"""Per-database statement builders, chosen by the engine's dialect name."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite

#: An INSERT that supports ``on_conflict_do_nothing`` on both databases.
UpsertInsert = sqlite.Insert | postgresql.Insert

SUPPORTED_DIALECTS = ("sqlite", "postgresql")


def insert_for(dialect_name: str) -> Callable[[Table], UpsertInsert]:
    """Return the dialect's ``insert`` constructor (with ON CONFLICT support)."""
    if dialect_name == "sqlite":
        return sqlite.insert
    if dialect_name == "postgresql":
        return postgresql.insert
    raise ValueError(
        f"unsupported database dialect {dialect_name!r}; "
        f"expected one of {', '.join(SUPPORTED_DIALECTS)}"
    )
