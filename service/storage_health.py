"""The standard health service follows the storage: NOT_SERVING while the
database cannot be used, SERVING again once it can.

A background probe opens and ends a write transaction every
``PROBE_SECONDS`` (``Store.check_storage``: nothing is written). When it
fails as unavailable, or does not answer within ``PROBE_TIMEOUT_SECONDS``,
every service the health servicer reports (and the server as a whole, "")
turns NOT_SERVING; the first probe that succeeds turns them SERVING again.
Meanwhile each RPC that needs the database answers UNAVAILABLE
(``api/errors.py``), and nothing acknowledged is lost: a write is
acknowledged only after its commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health_pb2

from stepd.server.cancelling import cancel_and_wait
from stepd.server.store.base import Store
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.server")

#: How often the storage is probed (seconds).
PROBE_SECONDS = 2.0
#: A probe that takes longer counts as failed (seconds); SQLite's busy timeout
#: (5 s) fits in it.
PROBE_TIMEOUT_SECONDS = 10.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StorageHealth:
    """Probes the store and sets the health of ``services`` ("" included) to match.

    ``health`` is a ``grpc_health.v1.health.aio.HealthServicer``.
    """

    def __init__(
        self,
        store: Store,
        health: Any,
        services: Sequence[str],
        *,
        period: float = PROBE_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self._store = store
        self._health = health
        self._services = tuple(services)
        self._period = period
        self._timeout = timeout
        self._available = True
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """Whether the last probe found the storage usable."""
        return self._available

    def start(self) -> None:
        """Start probing in the background."""
        self._task = asyncio.create_task(self._probe_forever(), name="stepd-storage-health")

    async def close(self) -> None:
        """Stop probing (before the server reports its shutdown)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            await self.probe()

    async def probe(self) -> bool:
        """Probe the storage once and set the health to match; return whether it is usable."""
        try:
            await asyncio.wait_for(self._store.check_storage(), self._timeout)
        except (StoreUnavailableError, TimeoutError) as exc:
            reason = str(exc) or "no answer within the probe's timeout"
            await self._set(False, reason)
        except Exception:
            log.exception("probing the storage failed")
            await self._set(False, "the probe failed")
        else:
            await self._set(True, "")
        return self._available

    async def _set(self, available: bool, reason: str) -> None:
        if available == self._available:
            return
        self._available = available
        if available:
            log.warning("storage is available again; health: SERVING")
        else:
            log.error("storage is unavailable (%s); health: NOT_SERVING", reason)
        status = SERVING if available else NOT_SERVING
        for name in self._services:
            await self._health.set(name, status)
