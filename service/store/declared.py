"""What workflows declared (concurrency limits, flow settings), remembered on
SQLite's writer connection between inserts of runs.

Every insert of a run reads its workflow's declarations (two primary-key
reads, a few percent of the server's time under load). On SQLite one server
owns the file and every write, declarations included, runs on one writer
connection, so a value read there stays true until a declaration on that
same connection changes it: ``remember`` keeps it in the connection's
``info`` and ``forget`` drops it, at the start of every declaration (a
declaration rolled back with its batch runs again alone, and forgets again).
On PostgreSQL another replica may declare at any time, so nothing is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection

T = TypeVar("T")

#: At most this many workflow names are remembered (a flood of unknown names
#: in triggers cannot grow it without bound); past it, it starts afresh.
MAX_REMEMBERED = 10_000
_INFO_KEY = "stepd.declared"


def remember(conn: Connection, kind: str, workflow_name: str, read: Callable[[], T]) -> T:
    """``read()``'s value for ``workflow_name``, remembered on SQLite's writer connection.

    Call it only from writes (their connection is the writer)."""
    if conn.dialect.name != "sqlite":
        return read()
    kept: dict[tuple[str, str], object] = conn.info.setdefault(_INFO_KEY, {})
    key = (kind, workflow_name)
    if key in kept:
        return kept[key]  # type: ignore[return-value]
    value = read()
    if len(kept) >= MAX_REMEMBERED:
        kept.clear()
    kept[key] = value
    return value


def forget(conn: Connection) -> None:
    """A declaration changes what workflows declared: remember nothing from before."""
    conn.info.pop(_INFO_KEY, None)
