"""The API keys in memory: verification without a database read per call.

The ring holds every stored key (its hash, role, expiry, revocation) and
reads them all again every ``refresh_seconds`` (2 s by default): a key created
or revoked through another replica, or on the database directly, counts here
within that time. A key unknown here makes the ring read the keys at once,
but at most every ``UNKNOWN_KEY_REFRESH_SECONDS`` (so a flood of made-up keys
costs at most two reads a second). Keys created or revoked through this server count
at once.

A revoked or expired key also ends the worker streams it opened: nothing the
worker sends afterwards is applied, and the stream is closed
(``StreamGuard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from stepd.server.domain import now_ms
from stepd.server.domain_keys import ApiKeyRecord
from stepd.server.security import keys
from stepd.server.security.roles import Principal
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.security")

DEFAULT_REFRESH_SECONDS = 2.0
#: The shortest time between two reads caused by keys unknown here.
UNKNOWN_KEY_REFRESH_SECONDS = 0.5


class KeySource(Protocol):
    """Where the keys are stored (the store's ``api_keys``)."""

    async def api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones included."""
        ...


class AuthenticationError(Exception):
    """The call carries no usable key; the message says why (never the key)."""


class StreamGuard:
    """A worker stream opened with a key: cut when the key stops working.

    Wraps the stream's request iterator. ``check_first`` sees the first message
    (the hello) before the server does, and may abort the call. Once cut, the
    iteration ends (the server then closes the stream) and the task reading it
    is cancelled, so a worker waiting for tasks is disconnected at once, not at
    its next message.
    """

    def __init__(
        self,
        requests: AsyncIterator[object],
        principal: Principal,
        check_first: Callable[[object], Awaitable[None]] | None = None,
    ) -> None:
        self._requests = requests
        self.principal = principal
        self.cut = False
        self._check_first = check_first
        self._reader: asyncio.Task[object] | None = None

    def __aiter__(self) -> StreamGuard:
        return self

    async def __anext__(self) -> object:
        if self.cut:
            raise StopAsyncIteration
        self._reader = asyncio.current_task()
        message = await anext(self._requests)
        if self.cut:
            raise StopAsyncIteration
        if self._check_first is not None:
            check, self._check_first = self._check_first, None
            await check(message)
        return message

    def close(self) -> None:
        """Stop the stream: its key was revoked or expired."""
        if self.cut:
            return
        self.cut = True
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()


class KeyRing:
    """Verifies API keys against the stored ones, cached in memory."""

    def __init__(
        self,
        source: KeySource,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._source = source
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._records: dict[str, ApiKeyRecord] = {}
        self._principals: dict[str, Principal] = {}
        # Keys verified already (key -> key id): their hash is not computed again.
        self._verified: dict[str, str] = {}
        self._streams: dict[str, set[StreamGuard]] = {}
        self._refreshed_at = float("-inf")  # time.monotonic() of the last read
        self._refreshing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def refresh_seconds(self) -> float:
        """How long a change made elsewhere takes to count here, at most."""
        return self._refresh_seconds

    def __len__(self) -> int:
        return len(self._records)

    async def start(self) -> None:
        """Read the keys, then keep them fresh."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except StoreUnavailableError as exc:
                log.warning("reading the API keys: storage unavailable (%s)", exc)
            except Exception:
                log.exception("reading the API keys failed; keeping the ones read before")

    async def refresh(self) -> None:
        """Read every key from the store (one read shared by concurrent callers)."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        done = self._refreshing = asyncio.get_running_loop().create_future()
        try:
            records = await self._source.api_keys()
            self._refreshed_at = time.monotonic()
            self._replace(records)
            done.set_result(None)
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            if not done.done():
                done.cancel()
            self._refreshing = None

    def _replace(self, records: list[ApiKeyRecord]) -> None:
        fresh = {r.key_id: r for r in records}
        changed = [k for k, r in self._records.items() if fresh.get(k) != r]
        self._records = fresh
        for key_id in changed:
            self._principals.pop(key_id, None)
        if changed:
            self._verified = {k: i for k, i in self._verified.items() if i not in changed}
        self._cut_unusable()

    def learn(self, record: ApiKeyRecord) -> None:
        """A key created or revoked through this server: count it at once."""
        self._records[record.key_id] = record
        self._principals.pop(record.key_id, None)
        self._cut_unusable()

    async def authenticate(self, key: str) -> Principal:
        """The principal of a usable key; AuthenticationError otherwise."""
        key_id = self._verified.get(key)
        if key_id is None:
            key_id = keys.key_id_of(key)
            if key_id is None:
                raise AuthenticationError(
                    "the authorization metadata holds no stepd API key (stepd_<id>_<secret>)"
                )
            record = self._records.get(key_id)
            since = time.monotonic() - self._refreshed_at
            if record is None and since >= min(self._refresh_seconds, UNKNOWN_KEY_REFRESH_SECONDS):
                await self.refresh()  # perhaps created through another replica just now
                record = self._records.get(key_id)
            if record is None or not keys.matches(key, record.secret_hash):
                raise AuthenticationError("unknown API key")
            self._verified[key] = key_id
        record = self._records[key_id]
        if record.revoke_time is not None:
            raise AuthenticationError(f"API key {key_id} was revoked")
        if record.expire_time is not None and self._clock() >= record.expire_time:
            raise AuthenticationError(f"API key {key_id} expired")
        principal = self._principals.get(key_id)
        if principal is None:
            principal = self._principals[key_id] = Principal(
                key_id, record.name, record.role, record.workflows
            )
        return principal

    def guard(
        self,
        requests: AsyncIterator[object],
        principal: Principal,
        check_first: Callable[[object], Awaitable[None]] | None = None,
    ) -> StreamGuard:
        """Watch a worker stream opened with ``principal``'s key (see StreamGuard)."""
        guard = StreamGuard(requests, principal, check_first)
        self._streams.setdefault(principal.key_id, set()).add(guard)
        return guard

    def release(self, guard: StreamGuard) -> None:
        """The stream ended."""
        guards = self._streams.get(guard.principal.key_id)
        if guards is not None:
            guards.discard(guard)
            if not guards:
                del self._streams[guard.principal.key_id]

    def check_streams(self) -> None:
        """Cut the streams of keys that expired since they were opened."""
        self._cut_unusable()

    def _cut_unusable(self) -> None:
        now = self._clock()
        for key_id, guards in list(self._streams.items()):
            record = self._records.get(key_id)
            if record is not None and record.usable_at(now):
                continue
            for guard in list(guards):
                if not guard.cut:
                    log.warning(
                        "API key %s was revoked or expired: closing its worker stream", key_id
                    )
                guard.close()
