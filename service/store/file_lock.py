"""One server per SQLite file: an exclusive lock held while the store is open.

Two servers on one file would each re-queue and hand out the other's runs (a
step body ran twice that way). SQLite's own locks only serialise
transactions, so the store takes an exclusive ``flock`` on a lock file beside
the database (``stepd.db.lock``) and holds it until it closes; a second
server is refused at start with the first one's process id. The kernel drops
the lock when the process dies, so a crash never leaves the file locked.
A separate file is used because closing any descriptor of the database file
itself would release SQLite's own POSIX locks in this process.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DatabaseInUseError(Exception):
    """Another process holds the database file's lock."""


class FileLock:
    """An exclusive, non-blocking lock on ``<database>.lock``."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DatabaseInUseError naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatabaseInUseError(
                f"the database {self.path.with_suffix('')} is in use by another stepd "
                f"server (pid {holder}); one server per SQLite file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
