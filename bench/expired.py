"""Old finished runs for the retention benchmark: ``--expired-runs N`` of
``bench/run.py`` seeds the benchmark's SQLite database with N completed runs
that ended long ago (each with three recorded steps and three history
entries, like a W1 run), before the server starts. With ``--server-arg
--retention --server-arg 1d`` the server deletes them while W1 runs; without
it they stay, so both sides measure the same database size.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from sqlalchemy import create_engine

from stepd.server.store.migrations import migrate

#: They ended this long before now (well past a retention of 1 day).
AGE_MS = 30 * 86_400_000
_BATCH = 5000


def seed(database: Path, count: int, now_ms: int) -> None:
    """Migrate ``database`` and insert ``count`` completed runs that ended long ago."""
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        migrate(conn)
    engine.dispose()
    ended = now_ms - AGE_MS
    result = json.dumps(4)
    with sqlite3.connect(database) as db:
        for start in range(0, count, _BATCH):
            ids = [uuid.uuid4().hex for _ in range(min(_BATCH, count - start))]
            db.executemany(
                "INSERT INTO runs (run_id, workflow_name, workflow_version, status, input_json,"
                " result_json, root_run_id, create_time, update_time, start_time, end_time,"
                " dispatch_count, lease_id) VALUES (?, 'bench.three_steps', '1', 'completed',"
                " '1', ?, ?, ?, ?, ?, ?, 1, 1)",
                [(i, result, i, ended - 50, ended, ended - 40, ended) for i in ids],
            )
            db.executemany(
                "INSERT INTO steps (run_id, step_key, attempt, result_json, start_time,"
                " end_time, record_time, lease_id) VALUES (?, ?, 1, '2', ?, ?, ?, 1)",
                [(i, key, ended - 30, ended - 20, ended - 10) for i in ids for key in "abc"],
            )
            db.executemany(
                "INSERT INTO run_events (run_id, time, type, detail, attempt)"
                " VALUES (?, ?, 'dispatched', 'bench-worker', 1)",
                [(i, ended - 40) for i in ids],
            )


def left(database: Path, now_ms: int) -> int:
    """How many of the seeded runs are still there."""
    with sqlite3.connect(database) as db:
        row = db.execute(
            "SELECT count(*) FROM runs WHERE end_time < ?", (now_ms - AGE_MS // 2,)
        ).fetchone()
    return int(row[0])
