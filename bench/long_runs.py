"""Benchmark long runs: many sequential steps, and a loop of (step, durable sleep).

``python bench/long_runs.py [--steps 1000] [--loops 200]``

Starts a server and one worker as separate processes (fresh SQLite, default
durability) and runs, one at a time, ``bench.long_steps`` (``--steps``
sequential steps) and ``bench.step_sleep_loop`` (``--loops`` times a step
then ``ctx.sleep(0.01)``; every sleep suspends the run, and a wake-up
continues it on the worker that keeps it live, or replays it). For each it
reports as JSON the total time, the time the first 100 and the last 100 steps
took (from the server's record times of the steps: a cost that grows with the
journal shows as a last 100 slower than the first 100), how many times the
run was dispatched and how many of those were continuations (only the new
journal entries sent, no replay), and the journal entries the server sent in
all its run tasks (the replay traffic).
"""

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.workflows import long_steps, step_sleep_loop  # noqa: E402
from stepd import Client  # noqa: E402
from tests.e2e.harness import Stack  # noqa: E402


def step_times(database: Path, run_id: str) -> list[int]:
    """The record times (ms) of a run's steps, in recording order."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT record_time FROM steps WHERE run_id = ? ORDER BY sequence", (run_id,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def replay_entries(database: Path, run_id: str) -> tuple[int, int]:
    """Journal entries the run's tasks carried, and how many tasks were continuations.

    A full task carries the steps and met waits recorded before it; a
    continuation (its DISPATCHED entry says so) only the waits met since the
    dispatch before it (the steps in between are the worker's own)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        dispatches = [
            (int(r[0]), str(r[1] or "").endswith("(continuation)"))
            for r in conn.execute(
                "SELECT time, detail FROM run_events WHERE run_id = ? AND type = 'dispatched' "
                "ORDER BY sequence",
                (run_id,),
            )
        ]
        steps = [
            int(r[0])
            for r in conn.execute("SELECT record_time FROM steps WHERE run_id = ?", (run_id,))
        ]
        waits = [
            int(r[0])
            for r in conn.execute(
                "SELECT met_time FROM run_waits WHERE run_id = ? AND status = 'met'", (run_id,)
            )
        ]
    entries = sorted(steps + waits)
    sent, previous = 0, -1
    for time_ms, continuation in dispatches:
        if continuation:  # the waits met since the dispatch before (its steps are known)
            sent += sum(1 for t in waits if previous < t <= time_ms)
        else:
            sent += sum(1 for t in entries if t <= time_ms)
        previous = time_ms
    return sent, sum(1 for _, continuation in dispatches if continuation)


async def measure(client: Client, database: Path, workflow: Any, count: int) -> dict[str, Any]:
    """Run one workflow to its end and describe how its cost grew."""
    start = time.perf_counter()
    handle = await client.trigger(workflow, count)
    await asyncio.wait_for(handle.result(), 600)
    total = time.perf_counter() - start
    times = step_times(database, handle.run_id)
    info = await client.get_run(handle.run_id)
    window = min(100, len(times) - 1)
    sent, continuations = replay_entries(database, handle.run_id)
    return {
        "steps": len(times),
        "total_s": round(total, 3),
        "first_100_steps_s": round((times[window] - times[0]) / 1000, 3),
        "last_100_steps_s": round((times[-1] - times[-1 - window]) / 1000, 3),
        "dispatches": info.dispatch_count,
        "continuations": continuations,
        "journal_entries_sent": sent,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--loops", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stepd-long-bench-"))
    stack = Stack(workdir)
    try:
        database = workdir / "stepd.db"
        server = stack.start_server(database)
        stack.start_worker(server, ["bench.workflows"])
        async with Client(server.address) as client:
            report = {
                "sequential_steps": await measure(client, database, long_steps, args.steps),
                "step_sleep_loop": await measure(client, database, step_sleep_loop, args.loops),
            }
        print(json.dumps(report, indent=2))
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
