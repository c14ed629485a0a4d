"""Benchmark replicas: W1 on PostgreSQL with 1 server and with 3, one command, JSON out.

``python bench/replicas.py --database postgresql://user@host:5432/postgres [--runs 2000]
[--repeat 3] [--replicas 3] [--workers 3]``

Each repetition measures W1 (``--runs`` 3-step runs, triggered concurrently,
as in ``bench/run.py``) twice, each time on a fresh database: with one
``stepd serve`` and with ``--replicas`` of them on that database. The same
``--workers`` worker processes run both times, spread over the replicas
(worker i connects to replica i mod N), and triggers go to the replicas in
turn. The user of ``--database`` needs CREATEDB (databases are created from a
migrated template and dropped afterwards).

Prints JSON — every repetition, the medians of runs/s for 1 and N replicas,
and the N-vs-1 ratio of each repetition and its median — and writes it to
``bench/results/replicas.json`` (or ``--output``). Exits 1 when a run failed.
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench.run import CpuMeter, git_commit, throughput  # noqa: E402
from bench.workflows import three_steps  # noqa: E402
from stepd import Client  # noqa: E402
from tests.backends import PostgresDatabases  # noqa: E402
from tests.e2e.harness import ManagedProcess, Stack  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "replicas.json"


async def measure(
    addresses: list[str], processes: dict[str, ManagedProcess], args: Any
) -> dict[str, Any]:
    """Warm up through every replica, then W1 with triggers spread over them."""
    clients = [Client(address) for address in addresses]
    try:
        await asyncio.gather(
            *(clients[i % len(clients)].execute(three_steps, i) for i in range(args.warmup))
        )
        with CpuMeter(processes) as cpu:
            w1 = await asyncio.wait_for(
                throughput(clients, args.runs, args.in_flight), args.timeout
            )
        w1["cpu_seconds"] = cpu.used
        return w1
    finally:
        for client in clients:
            await client.close()


def w1_on(replicas: int, databases: PostgresDatabases, args: Any) -> dict[str, Any]:
    """Start ``replicas`` servers on a fresh database and the workers; measure W1."""
    database = databases.create()
    workdir = Path(tempfile.mkdtemp(prefix=f"stepd-bench-replicas-{replicas}-"))
    stack = Stack(workdir)
    keep_logs = True
    try:
        server_args = ["--db-pool-size", str(args.db_pool_size), *args.server_arg]
        servers = stack.start_replicas(database, replicas, args=server_args)
        processes: dict[str, ManagedProcess] = {}
        for n, server in enumerate(servers):
            processes[f"server{n + 1}"] = server.process
        for n in range(args.workers):
            processes[f"worker{n + 1}"] = stack.start_worker(
                servers[n % replicas], ["bench.workflows"], concurrency=args.worker_concurrency
            )
        w1: dict[str, Any] = asyncio.run(measure([s.address for s in servers], processes, args))
        w1["replicas"] = replicas
        keep_logs = w1["failures"] > 0
        return w1
    finally:
        stack.close()
        if keep_logs:
            for process in stack.processes:
                print(f"--- {process.name} log ({workdir}) ---", file=sys.stderr)
                print(process.log_tail(40), file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        databases.drop(database)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        default=os.environ.get("STEPD_TEST_POSTGRES_URL"),
        help="a PostgreSQL server (any database on it) whose user may CREATE DATABASE "
        "(default $STEPD_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--runs", type=int, default=2000, help="W1 runs (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--replicas", type=int, default=3, help="replicas to compare with 1")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--in-flight", type=int, default=200, help="W1 concurrent triggers")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per workload")
    parser.add_argument("--worker-concurrency", type=int, help="worker --concurrency")
    parser.add_argument("--db-pool-size", type=int, default=20, help="each server's pool")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `stepd serve` argument"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON too")
    args = parser.parse_args()
    if not args.database:
        parser.error("--database (or STEPD_TEST_POSTGRES_URL) is required")

    databases = PostgresDatabases(args.database)
    reps: list[dict[str, Any]] = []
    try:
        for number in range(1, args.repeat + 1):
            one = w1_on(1, databases, args)
            many = w1_on(args.replicas, databases, args)
            ratio = round(many["runs_per_s"] / one["runs_per_s"], 2)
            reps.append({"one_replica": one, "replicas": many, "ratio": ratio})
            print(
                f"repetition {number}: W1 {one['runs_per_s']} runs/s on 1 replica, "
                f"{many['runs_per_s']} on {args.replicas} (x{ratio})",
                file=sys.stderr,
            )
    finally:
        databases.close()

    def median(pick: Callable[[dict[str, Any]], float]) -> float:
        return round(float(statistics.median(pick(rep) for rep in reps)), 2)

    failures = sum(rep["one_replica"]["failures"] + rep["replicas"]["failures"] for rep in reps)
    report = {
        "benchmark": "stepd replicas (W1 on PostgreSQL)",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "config": {
            "runs": args.runs,
            "in_flight": args.in_flight,
            "replicas": args.replicas,
            "workers": args.workers,
            "db_pool_size": args.db_pool_size,
            "repeat": args.repeat,
            "server_args": args.server_arg,
        },
        "repetitions": reps,
        "median": {
            "w1_runs_per_s_1_replica": median(lambda r: r["one_replica"]["runs_per_s"]),
            f"w1_runs_per_s_{args.replicas}_replicas": median(
                lambda r: r["replicas"]["runs_per_s"]
            ),
            "ratio": median(lambda r: r["ratio"]),
        },
        "failures": failures,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
