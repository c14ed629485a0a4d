"""What workflows declared (concurrency limits, flow settings), remembered on
SQLite's writer connection between inserts of runs.

Every insert of a run reads its workflow's declarations (two primary-key
reads, a few percent of the server's time under load). On SQLite one server
owns the file and every write, declarations included, runs on one writer
connection, so a value read there stays true until a declaration on that
same connection changes it: ``remember`` keeps it in the connection's
``info`` and ``forget`` drops it, at the start of every declaration (a
declaration rolled back with its batch runs again alone, and forgets again).
On PostgreSQL another replica may declare at any time, so values are kept
only for one transaction that carries a batch of writes (``for_batch``): the
batch's writes run concurrently with any declaration elsewhere, so reading
the declarations once for all of them is as good as reading them per write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    kept: dict[tuple[str, str], object] | None
    if conn.dialect.name == "sqlite":
        kept = conn.info.setdefault(_INFO_KEY, {})
    else:
        kept = conn.info.get(_INFO_KEY)
        if kept is None:  # not inside a batch
            return read()
    key = (kind, workflow_name)
    if key in kept:
        return kept[key]  # type: ignore[return-value]
    value = read()
    if len(kept) >= MAX_REMEMBERED:
        kept.clear()
    kept[key] = value
    return value


@contextmanager
def for_batch(conn: Connection) -> Iterator[None]:
    """Remember declarations on ``conn`` (PostgreSQL) until the block ends: wrap
    the writes of one transaction with it."""
    conn.info[_INFO_KEY] = {}
    try:
        yield
    finally:
        forget(conn)


def forget(conn: Connection) -> None:
    """A declaration changes what workflows declared: remember nothing from before."""
    conn.info.pop(_INFO_KEY, None)
