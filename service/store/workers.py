"""Connected workers of every replica (the ``connected_workers`` table).

Each replica rewrites the rows of its own worker streams every few seconds
(``save_workers``: its rows are replaced whole) and deletes them when it
stops; a replica that died leaves rows that stop being refreshed, and readers
ignore rows older than they accept (``workers_since``). On one server with
SQLite the engine lists its streams from memory and never writes here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, RowMapping, delete, select

from stepd.server.clock import Clock
from stepd.server.domain import WorkerInfo
from stepd.server.store.executor import Committer, Reader
from stepd.server.store.schema import connected_workers


def replace_replica(
    conn: Connection, replica_id: str, workers: Sequence[WorkerInfo], now: int, stale_before: int
) -> None:
    """Replace a replica's rows with ``workers``, and drop every row not refreshed
    since ``stale_before`` (replicas that died)."""
    conn.execute(
        delete(connected_workers).where(
            (connected_workers.c.replica_id == replica_id)
            | (connected_workers.c.update_time < stale_before)
        )
    )
    if workers:
        conn.execute(
            connected_workers.insert(),
            [
                {
                    "session_id": w.session_id,
                    "replica_id": replica_id,
                    "worker_id": w.worker_id,
                    "identity": w.identity,
                    "workflows": json.dumps([list(pair) for pair in w.workflows]),
                    "capacity": w.capacity,
                    "runs_held": w.runs_held,
                    "draining": int(w.draining),
                    "connect_time": w.connect_time,
                    "last_seen": w.last_seen,
                    "update_time": now,
                }
                for w in workers
            ],
        )


def read_since(conn: Connection, since: int) -> list[WorkerInfo]:
    """Every row refreshed at or after ``since``, by session id."""
    found = conn.execute(
        select(connected_workers)
        .where(connected_workers.c.update_time >= since)
        .order_by(connected_workers.c.session_id)
    ).mappings()
    return [_from_row(row) for row in found]


def _from_row(row: RowMapping) -> WorkerInfo:
    return WorkerInfo(
        session_id=row["session_id"],
        replica_id=row["replica_id"],
        worker_id=row["worker_id"],
        identity=row["identity"],
        workflows=tuple((str(n), str(v)) for n, v in json.loads(row["workflows"])),
        capacity=row["capacity"],
        runs_held=row["runs_held"],
        draining=bool(row["draining"]),
        connect_time=row["connect_time"],
        last_seen=row["last_seen"],
    )


class WorkerStoreMixin:
    """The ``Store`` methods for the connected workers, for ``SqlStore``."""

    _committer: Committer
    _reads: Reader
    _clock: Clock

    async def save_workers(
        self, replica_id: str, workers: Sequence[WorkerInfo], stale_before: int
    ) -> None:
        """Replace this replica's worker rows; drop rows not refreshed since
        ``stale_before``."""
        now = self._clock.now_ms()
        await self._committer.submit(
            lambda conn: replace_replica(conn, replica_id, workers, now, stale_before)
        )

    async def workers_since(self, since: int) -> list[WorkerInfo]:
        """Every replica's workers whose rows were refreshed at or after ``since``."""
        return await self._reads.run(lambda conn: read_since(conn, since))
