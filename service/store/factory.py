"""``open_store``: build and open the store named by a path or URL."""

from __future__ import annotations

from pathlib import Path

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.store import postgres
from stepd.server.store.file_lock import FileLock
from stepd.server.store.group_commit import GroupCommitter
from stepd.server.store.read_pool import ReadPool
from stepd.server.store.sql_store import SqlStore
from stepd.server.store.sqlite import (
    DEFAULT_READERS,
    classify,
    create_reader_engine,
    create_writer_engine,
    parse_synchronous,
)

_SQLITE_PREFIXES = ("sqlite+aiosqlite:///", "sqlite:///")


def sqlite_path(database: str) -> Path:
    """Return the file path named by ``database`` (a path or ``sqlite:///path``).

    Raises ValueError for in-memory databases and for a missing directory.
    """
    for prefix in _SQLITE_PREFIXES:
        if database.startswith(prefix):
            database = database[len(prefix) :]
            break
    else:
        if database.startswith("sqlite:"):
            raise ValueError(f"expected sqlite:///<path>, got {database!r}")
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError(
            f"stepd needs a database file path (for example stepd.db), got {database!r}"
        )
    path = Path(database)
    if not path.parent.is_dir():
        raise ValueError(f"the directory of the database file does not exist: {path.parent}")
    return path


async def open_store(
    database: str,
    *,
    synchronous: str = "FULL",
    readers: int = DEFAULT_READERS,
    max_batch: int = 500,
    pool_size: int = postgres.DEFAULT_POOL_SIZE,
    clock: Clock = SYSTEM_CLOCK,
) -> SqlStore:
    """Open (creating and migrating if needed) the store at ``database``.

    ``database`` is a SQLite file path (``stepd.db``), ``sqlite:///path``, or
    a PostgreSQL URL (``postgresql://user@host:5432/dbname``).

    SQLite: the file and its schema are created when missing, but not its
    directory. One store at a time may hold the file (``DatabaseInUseError``,
    see ``file_lock``). ``synchronous`` is ``FULL`` (an acknowledged write survives
    power loss) or ``NORMAL`` (it survives a crash of the process); see
    ``stepd.server.store.sqlite``. ``readers`` and ``max_batch`` size the reader
    pool and the group commit.

    PostgreSQL: the database must exist; the schema is created in it when
    missing. The server holds at most ``pool_size`` connections.

    ``clock`` gives the times the store records and compares (the engine's).
    """
    if postgres.is_postgres_url(database):
        executor = postgres.PostgresExecutor(postgres.create_engine(database, pool_size=pool_size))
        store = SqlStore(executor, executor, migrate=postgres.migrate_locked, clock=clock)
    else:
        path = sqlite_path(database)
        mode = parse_synchronous(synchronous)
        lock = FileLock(path)
        lock.acquire()
        writer = create_writer_engine(path, synchronous=mode)
        reader = create_reader_engine(path, readers=readers)
        store = SqlStore(
            GroupCommitter(writer, max_batch=max_batch, classify=classify),
            ReadPool(reader, threads=readers, classify=classify),
            on_close=lock.release,
            clock=clock,
        )
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store
