"""LISTEN/NOTIFY between server replicas that share one PostgreSQL database.

``NotifyChannel`` owns one dedicated asyncpg connection (outside the store's
pool): it LISTENs on one channel and sends with ``pg_notify``. Messages are
short text; what they mean is the engine's business
(``stepd.server.engine.replicas``). A notification is a hint, never the only way
to learn something: a replica that misses one (its connection dropped, the
sender crashed between its commit and its notify) finds the same work by
polling. On SQLite (one server process) there is no channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from stepd.server.store.errors import StoreUnavailableError
from stepd.server.store.postgres import is_postgres_url

log = logging.getLogger("stepd.notify")

#: The channel every stepd replica of a database listens on.
CHANNEL = "stepd_replicas"
#: PostgreSQL refuses notification payloads of 8000 bytes and more.
MAX_PAYLOAD_BYTES = 7900

OnMessage = Callable[[str], None]


class NotifyChannel:
    """One LISTEN connection that also sends: ``start``, ``send``, ``close``.

    ``on_message`` is called on the event loop for every notification on the
    channel (this replica's own ones included); ``on_reconnect`` after the
    connection was lost and opened again (notifications may have been missed).
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None  # asyncpg.Connection (untyped package)
        self._on_message: OnMessage | None = None
        self._on_reconnect: Callable[[], None] | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self._closed = False

    async def start(self, on_message: OnMessage, on_reconnect: Callable[[], None]) -> None:
        """Connect and LISTEN."""
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        async with self._lock:
            await self._connect()

    async def send(self, payloads: Sequence[str]) -> None:
        """NOTIFY each payload (one round trip); reconnects first when the
        connection was lost. Raises when the database cannot be reached."""
        if not payloads or self._closed:
            return
        async with self._lock:
            await self._ensure()
            await self._conn.execute(
                "SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m", CHANNEL, list(payloads)
            )

    async def check(self) -> None:
        """Reconnect (and tell ``on_reconnect``) when the connection was lost."""
        if self._closed:
            return
        async with self._lock:
            await self._ensure()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._closed = True
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                try:
                    await asyncio.wait_for(self._conn.close(), 5)
                except (OSError, TimeoutError, asyncpg.PostgresError):
                    self._conn.terminate()
            self._conn = None

    async def _ensure(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        log.warning("the LISTEN connection was lost; reconnecting")
        await self._connect()
        if self._on_reconnect is not None:
            self._on_reconnect()

    async def _connect(self) -> None:
        try:
            self._conn = await asyncpg.connect(self._dsn)
            await self._conn.add_listener(CHANNEL, self._deliver)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailableError(str(exc) or type(exc).__name__) from exc

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if self._on_message is not None and not self._closed:
            try:
                self._on_message(payload)
            except Exception:
                log.exception("handling a notification failed")


def channel_for(database: str) -> NotifyChannel | None:
    """The channel for ``database``: a ``NotifyChannel`` on PostgreSQL, None on SQLite."""
    if not is_postgres_url(database):
        return None
    dsn = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    return NotifyChannel(dsn)
