"""Benchmark durable sleep: many runs sleeping at once on one server.

``python bench/sleep.py [--runs 10000] [--seconds 2] [--concurrency 200]``

Starts a server and one worker as separate processes (fresh SQLite, default
durability), triggers ``--runs`` runs of a workflow that records a step,
sleeps ``--seconds`` durably and records another step, and reports as JSON:

* timer lateness: per run, when the server met the wait minus its fire time
  (read from the database after the runs finished);
* resume lateness: per run, when the workflow ran again after the sleep minus
  the time it asked to wake (includes waiting for a free worker slot);
* the most runs sleeping at the same moment, against the worker's
  ``--concurrency`` (a sleeping run holds no slot, so it can be far higher);
* the server's peak resident memory (VmHWM).
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

from bench.workflows import sleeper  # noqa: E402
from stepd import Client  # noqa: E402
from tests.e2e.harness import Stack  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of non-empty values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def peak_memory_mb(pid: int) -> float:
    """A process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def count_sleeping(database: Path) -> int:
    """How many runs are suspended right now (read-only)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM runs WHERE status='suspended'").fetchone()[0])


def timer_lateness_ms(database: Path) -> list[float]:
    """met_time - fire_time of every met timer, in ms."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT met_time - fire_time FROM run_waits WHERE kind='timer' AND status='met'"
        ).fetchall()
    return [float(r[0]) for r in rows]


async def load(address: str, database: Path, runs: int, seconds: float) -> dict[str, Any]:
    """Trigger the runs, sample how many sleep at once, collect resume lateness."""
    async with Client(address) as client:
        started = time.perf_counter()
        sem = asyncio.Semaphore(200)

        async def trigger(i: int) -> Any:
            async with sem:
                return await client.trigger(sleeper, seconds)

        handles = await asyncio.gather(*(trigger(i) for i in range(runs)))
        triggered = time.perf_counter() - started
        peak_sleeping = 0
        results: list[float] = []

        async def sample() -> None:
            nonlocal peak_sleeping
            while True:
                peak_sleeping = max(
                    peak_sleeping, await asyncio.to_thread(count_sleeping, database)
                )
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        try:
            results = list(await asyncio.gather(*(h.result() for h in handles)))
        finally:
            sampler.cancel()
        total = time.perf_counter() - started
    resume_ms = [r * 1000 for r in results]
    return {
        "trigger_seconds": round(triggered, 2),
        "total_seconds": round(total, 2),
        "peak_sleeping": peak_sleeping,
        "resume_lateness_ms": {
            "p50": round(percentile(resume_ms, 50), 1),
            "p99": round(percentile(resume_ms, 99), 1),
            "max": round(max(resume_ms), 1),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=200, help="worker --concurrency")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stepd-sleep-bench-"))
    stack = Stack(workdir)
    database = workdir / "sleep.db"
    failed = True
    try:
        server = stack.start_server(database)
        stack.start_worker(server, ["bench.workflows"], concurrency=args.concurrency)
        result = asyncio.run(load(server.address, database, args.runs, args.seconds))
        failed = False
        timer_ms = timer_lateness_ms(database)
        result.update(
            runs=args.runs,
            sleep_seconds=args.seconds,
            worker_concurrency=args.concurrency,
            timer_lateness_ms={
                "p50": round(percentile(timer_ms, 50), 1),
                "p99": round(percentile(timer_ms, 99), 1),
                "max": round(max(timer_ms), 1),
            },
            server_peak_memory_mib=round(peak_memory_mb(server.process.pid), 1),
        )
        print(json.dumps(result, indent=2))
        return 0
    finally:
        stack.close()
        if failed:
            for process in stack.processes:
                print(f"--- {process.name} log ({workdir}) ---", file=sys.stderr)
                print(process.log_tail(40), file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
