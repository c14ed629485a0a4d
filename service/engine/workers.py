"""The list of connected workers (``ListWorkers``), across replicas.

On one server (SQLite) the list is this process's worker streams, read from
memory. Replicas sharing PostgreSQL each write their own streams to the store
every few seconds (``WorkerDirectory.publish``: a replica's rows are replaced
whole), and a list is every replica's rows refreshed recently, with this
replica's own streams read fresh from memory. A replica that died stops
refreshing its rows; they drop out of lists after ``STALE_AFTER_MS`` and are
deleted at the next write of any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain import WorkerInfo
from stepd.server.engine.sessions import WorkerSession
from stepd.server.store.base import Store
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.workers")

#: How often a replica writes its workers to the store, in seconds.
PUBLISH_SECONDS = 2.0
#: Rows older than this are a dead replica's: left out, then deleted.
STALE_AFTER_MS = 10_000


class WorkerDirectory:
    """Lists the connected workers; on replicas, publishes this replica's.

    ``sessions`` gives this replica's open worker streams now.
    """

    def __init__(
        self,
        store: Store,
        replica_id: str,
        sessions: Callable[[], Iterable[WorkerSession]],
        *,
        replicated: bool,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._replica_id = replica_id
        self._sessions = sessions
        self._replicated = replicated
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start publishing (replicas only)."""
        if self._replicated and self._task is None:
            self._task = asyncio.create_task(self._publish_forever())

    async def close(self) -> None:
        """Stop publishing and remove this replica's rows."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            await self._store.save_workers(self._replica_id, [], self._stale_before())

    def local(self) -> list[WorkerInfo]:
        """This replica's open worker streams, as they stand now."""
        now = self._clock.now_ms()
        monotonic = time.monotonic()
        return [
            WorkerInfo(
                session_id=s.session_id,
                replica_id=self._replica_id,
                worker_id=s.worker_id,
                identity=s.identity,
                workflows=tuple(sorted(s.serves)),
                capacity=s.capacity,
                runs_held=len(s.held),
                draining=s.draining,
                connect_time=s.connect_time,
                last_seen=now - int((monotonic - s.last_seen) * 1000),
            )
            for s in self._sessions()
            if not s.closed
        ]

    async def list(self) -> list[WorkerInfo]:
        """Every connected worker (every replica's), by session id."""
        mine = self.local()
        if not self._replicated:
            return sorted(mine, key=lambda w: w.session_id)
        others = await self._store.workers_since(self._clock.now_ms() - STALE_AFTER_MS)
        found = {w.session_id: w for w in others if w.replica_id != self._replica_id}
        found.update((w.session_id, w) for w in mine)
        return [found[key] for key in sorted(found)]

    async def served_elsewhere(self, name: str, version: str) -> bool:
        """Whether a worker of another replica serves ``name`` at ``version`` (any
        version when ``version`` is empty), as last published (every 2 s)."""
        if not self._replicated:
            return False
        others = await self._store.workers_since(self._clock.now_ms() - STALE_AFTER_MS)
        return any(
            served == name and (not version or served_version == version)
            for worker in others
            if worker.replica_id != self._replica_id and not worker.draining
            for served, served_version in worker.workflows
        )

    async def publish(self) -> None:
        """Write this replica's workers to the store."""
        await self._store.save_workers(self._replica_id, self.local(), self._stale_before())

    def _stale_before(self) -> int:
        return self._clock.now_ms() - STALE_AFTER_MS

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self.publish()
            except StoreUnavailableError as exc:
                log.warning("publishing the connected workers: storage unavailable (%s)", exc)
            except Exception:
                log.exception("publishing the connected workers failed")
            await asyncio.sleep(PUBLISH_SECONDS)
