"""How the store's statements reach a database: the two executor interfaces.

The statement logic (``sql_store``, ``waits``, ``signals``, ``events``,
``history``, the migrations) is synchronous SQLAlchemy Core code written as
*operations*: functions that take a ``Connection`` and return a value. An
executor decides how an operation gets a connection and a transaction:

* SQLite: ``GroupCommitter`` runs writes on one writer connection on its own
  thread, many operations per transaction; ``ReadPool`` runs reads on a few
  reader threads.
* PostgreSQL: ``stepd.server.store.postgres.PostgresExecutor`` runs each write in
  its own READ COMMITTED transaction on a pooled asyncpg connection (through
  SQLAlchemy's async engine and ``run_sync``), and each read on a pooled
  connection in autocommit mode.

Either way an operation may run more than once (a failed batch is retried one
by one; a PostgreSQL deadlock is retried), so it must only touch the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")

#: A write: runs statements on a connection inside a transaction.
WriteOp = Callable[[Connection], T]
#: A read: runs statements on a connection (each statement sees the latest commit).
ReadOp = Callable[[Connection], T]


@dataclass(slots=True)
class CommitStats:
    """What a committer has done since it started: for tests and metrics."""

    # Transactions committed, and the writes they carried.
    commits: int = 0
    ops: int = 0
    # Batches run (a batch that failed and was run again one by one counts once).
    batches: int = 0
    batches_retried: int = 0
    largest_batch: int = 0


class Committer(Protocol):
    """Runs write operations; answers each only after its transaction committed."""

    @property
    def engine(self) -> Engine:
        """The (synchronous view of the) engine writes run on: its dialect, its events."""
        ...

    @property
    def ordered(self) -> bool:
        """True when writes about one run (submitted with its id as ``key``) run
        and commit in the order submitted."""
        ...

    @property
    def stats(self) -> CommitStats:
        """Counters of commits and writes."""
        ...

    async def start(self) -> None:
        """Get ready to take writes."""

    async def submit(self, op: WriteOp[T], key: str | None = None) -> T:
        """Run ``op`` in a transaction and return its result once committed;
        ``key`` names the run it writes about, if one."""
        ...

    async def close(self) -> None:
        """Finish the writes in flight, refuse new ones, release the connections."""


class Reader(Protocol):
    """Runs read operations."""

    @property
    def engine(self) -> Engine:
        """The (synchronous view of the) engine reads run on."""
        ...

    async def run(self, op: ReadOp[T]) -> T:
        """Run ``op`` on a connection and return its result."""
        ...

    async def close(self) -> None:
        """Finish the reads in flight, refuse new ones, release the connections."""
