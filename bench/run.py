"""Benchmark stepd: one command, JSON out.

``python bench/run.py [--runs 2000] [--repeat 3] [--security off|on|both]``

Each repetition starts a fresh server (new SQLite file, default durability:
WAL with synchronous=FULL) and one worker serving ``bench.workflows``, both as
separate processes, then measures

* W1, throughput: ``--runs`` runs of a 3-step workflow, triggered concurrently
  (at most ``--in-flight`` Trigger calls at once, each result awaited as soon
  as its run exists); runs/s and steps/s from the first trigger to the last
  result;
* W2, latency: ``--latency-runs`` runs of a 1-step workflow one after the
  other; p50/p99 of trigger -> result in milliseconds.

``--concurrency-keys N`` runs W1 on a workflow with a concurrency limit of 1
per key (``Concurrency(key="customer", limit=1)``), the runs spread over N
keys in turn (issue 17 measures it with 1,000 keys against W1 without).

``--security on`` runs the server with TLS, API keys and a hook secret (the
certificates and keys are made for the run; the client and the worker use
them); ``both`` runs each repetition without, then with them, and reports
both medians and their ratio (the cost of security, measured in one sitting).

Prints JSON (every repetition and the medians) and writes it to
``bench/results/latest.json`` (or ``--output``). Exits 1 when a run failed, or
when a target was missed with ``--check-targets``.
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench.expired import left as expired_left  # noqa: E402
from bench.expired import seed as seed_expired  # noqa: E402
from bench.workflows import one_step, three_steps, three_steps_limited  # noqa: E402
from stepd import Client  # noqa: E402
from tests.e2e.harness import ManagedProcess, Stack, console_script  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latest.json"
TARGETS = {"w1_runs_per_s": 200.0, "w2_p50_ms": 10.0}
STEPS_PER_RUN = 3


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0.0 when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the server, the worker and this process over a span."""

    def __init__(self, processes: dict[str, ManagedProcess]) -> None:
        self._pids = {name: process.pid for name, process in processes.items()}
        self._start: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        sample["bench"] = time.process_time()
        return sample

    def __enter__(self) -> "CpuMeter":
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        self.used = {name: round(end[name] - self._start[name], 3) for name in end}

    used: dict[str, float]


def percentile(values: list[float], pct: int) -> float:
    """The pct-th percentile (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


async def throughput(
    clients: Sequence[Client], runs: int, in_flight: int, keys: int = 0
) -> dict[str, Any]:
    """W1: trigger ``runs`` 3-step runs concurrently (through the clients in turn:
    one per server replica); time until the last result. With ``keys``, the
    workflow has a concurrency limit of 1 per key and run i has key i % keys."""
    limit = asyncio.Semaphore(in_flight)
    failures: list[str] = []

    async def one(index: int) -> None:
        async with limit:
            client = clients[index % len(clients)]
            if keys:
                job = {"value": index, "customer": index % keys}
                handle = await client.trigger(three_steps_limited, job)
            else:
                handle = await client.trigger(three_steps, index)
        result = await handle.result()
        if result != 2 * index + 1:
            failures.append(f"run {handle.run_id}: expected {2 * index + 1}, got {result!r}")

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(runs)), return_exceptions=True)
    elapsed = time.perf_counter() - started
    failures += [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    return {
        "runs": runs,
        "steps": runs * STEPS_PER_RUN,
        "in_flight": in_flight,
        "seconds": round(elapsed, 3),
        "concurrency_keys": keys,
        "runs_per_s": round(runs / elapsed, 1),
        "steps_per_s": round(runs * STEPS_PER_RUN / elapsed, 1),
        "failures": len(failures),
        "first_failures": failures[:5],
    }


async def latency(client: Client, runs: int) -> dict[str, Any]:
    """W2: ``runs`` 1-step runs one after the other; trigger -> result latency."""
    samples: list[float] = []
    for index in range(runs):
        started = time.perf_counter()
        result = await client.execute(one_step, index)
        samples.append((time.perf_counter() - started) * 1000)
        if result != index:
            raise RuntimeError(f"one_step({index}) returned {result!r}")
    return {
        "runs": runs,
        "p50_ms": round(percentile(samples, 50), 2),
        "p90_ms": round(percentile(samples, 90), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "mean_ms": round(statistics.fmean(samples), 2),
        "max_ms": round(max(samples), 2),
    }


async def measure(
    address: str,
    processes: dict[str, ManagedProcess],
    args: Any,
    client_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Warm up, then W1 and W2 against one server."""
    async with Client(address, **(client_options or {})) as client:
        await asyncio.gather(*(client.execute(three_steps, i) for i in range(args.warmup)))
        await asyncio.gather(*(client.execute(one_step, i) for i in range(args.warmup)))
        with CpuMeter(processes) as w1_cpu:
            w1 = await asyncio.wait_for(
                throughput([client], args.runs, args.in_flight, args.concurrency_keys),
                args.timeout,
            )
        w1["cpu_seconds"] = w1_cpu.used
        w2 = await asyncio.wait_for(latency(client, args.latency_runs), args.timeout)
    return {"w1": w1, "w2": w2}


def make_key(database: Path, role: str, *more: str) -> str:
    """An API key made on the database before the server starts."""
    argv = [*console_script("stepd", "stepd.server.cli"), "keys", "create", "--role", role]
    argv += ["--name", f"bench-{role}", *more, "--database", str(database)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def secure_setup(workdir: Path, database: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """TLS, keys and a hook secret: (server args, worker args, client options)."""
    from tests.certs import make_certificates

    certs = make_certificates(workdir / "certs")
    secret = workdir / "hook-secret"
    secret.write_text("b" * 64)
    client_key = make_key(database, "client")
    worker_key = make_key(database, "worker", "--workflow", "bench.*")
    server_args = ["--auth", "keys", "--tls-cert", str(certs.server.cert)]
    server_args += ["--tls-key", str(certs.server.key), "--hook-secret-file", str(secret)]
    worker_args = ["--tls-ca", str(certs.ca), "--api-key", worker_key]
    return server_args, worker_args, {"api_key": client_key, "ca_file": certs.ca}


def repetition(number: int, args: Any, *, secure: bool = False) -> dict[str, Any]:
    """Start a fresh server and worker, measure, stop them."""
    workdir = Path(tempfile.mkdtemp(prefix=f"stepd-bench-{number}-"))
    stack = Stack(workdir)
    keep_logs = True
    database = workdir / "bench.db"
    server_args: list[str] = list(args.server_arg)
    worker_args: list[str] = []
    client_options: dict[str, Any] = {}
    if secure:
        more_server, worker_args, client_options = secure_setup(workdir, database)
        server_args += more_server
    if args.expired_runs:
        seed_expired(database, args.expired_runs, int(time.time() * 1000))
    try:
        server = stack.start_server(database, args=server_args)
        worker = stack.start_worker(
            server, ["bench.workflows"], concurrency=args.worker_concurrency, args=worker_args
        )
        processes = {"server": server.process, "worker": worker}
        result = asyncio.run(measure(server.address, processes, args, client_options))
        result["security"] = "on" if secure else "off"
        if args.expired_runs:
            result["expired_runs_left"] = expired_left(database, int(time.time() * 1000))
        keep_logs = result["w1"]["failures"] > 0
        return result
    finally:
        codes = stack.close()
        if keep_logs:
            for process in stack.processes:
                print(f"--- {process.name} log ({workdir}) ---", file=sys.stderr)
                print(process.log_tail(40), file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            print(f"warning: processes did not exit cleanly: {unclean}", file=sys.stderr)


def median_of(reps: list[dict[str, Any]], pick: Callable[[dict[str, Any]], float]) -> float:
    return round(statistics.median(pick(rep) for rep in reps), 2)


def medians(reps: list[dict[str, Any]]) -> dict[str, float]:
    """The medians over repetitions of W1 and W2."""
    return {
        "w1_runs_per_s": median_of(reps, lambda r: r["w1"]["runs_per_s"]),
        "w1_steps_per_s": median_of(reps, lambda r: r["w1"]["steps_per_s"]),
        "w2_p50_ms": median_of(reps, lambda r: r["w2"]["p50_ms"]),
        "w2_p99_ms": median_of(reps, lambda r: r["w2"]["p99_ms"]),
    }


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="W1 runs (default 2000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--in-flight", type=int, default=200, help="W1 concurrent triggers")
    parser.add_argument("--latency-runs", type=int, default=200, help="W2 runs (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed runs first")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per workload")
    parser.add_argument("--worker-concurrency", type=int, help="worker --concurrency")
    parser.add_argument(
        "--concurrency-keys",
        type=int,
        default=0,
        help="W1 under a concurrency limit of 1 per key, over this many keys (0: no limit)",
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `stepd serve` argument"
    )
    parser.add_argument(
        "--security",
        choices=["off", "on", "both"],
        default="off",
        help="TLS, API keys and a hook secret: off, on, or both (each repetition twice)",
    )
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 when a target is missed"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON too")
    parser.add_argument(
        "--expired-runs",
        type=int,
        default=0,
        help="seed the database with this many runs that ended 30 days ago (retention)",
    )
    args = parser.parse_args()

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.security]
    reps: list[dict[str, Any]] = []
    secure_reps: list[dict[str, Any]] = []
    for number in range(1, args.repeat + 1):
        for secure in modes:
            rep = repetition(number, args, secure=secure)
            print(
                f"repetition {number}{' (security on)' if secure else ''}: "
                f"W1 {rep['w1']['runs_per_s']} runs/s, "
                f"W2 p50 {rep['w2']['p50_ms']} ms, p99 {rep['w2']['p99_ms']} ms",
                file=sys.stderr,
            )
            (secure_reps if secure and args.security == "both" else reps).append(rep)

    median = medians(reps)
    met = {
        "w1_runs_per_s": median["w1_runs_per_s"] >= TARGETS["w1_runs_per_s"],
        "w2_p50_ms": median["w2_p50_ms"] <= TARGETS["w2_p50_ms"],
    }
    failures = sum(rep["w1"]["failures"] for rep in (*reps, *secure_reps))
    report = {
        "benchmark": "stepd",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "config": {
            "runs": args.runs,
            "steps_per_run": STEPS_PER_RUN,
            "in_flight": args.in_flight,
            "latency_runs": args.latency_runs,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "worker_concurrency": args.worker_concurrency or "default",
            "concurrency_keys": args.concurrency_keys,
            "server_args": args.server_arg,
            "security": args.security,
        },
        "repetitions": reps,
        "median": median,
        "targets": TARGETS,
        "targets_met": met,
        "failures": failures,
    }
    if secure_reps:
        secure_median = medians(secure_reps)
        report["repetitions_secure"] = secure_reps
        report["median_secure"] = secure_median
        report["w1_secure_ratio"] = round(
            secure_median["w1_runs_per_s"] / median["w1_runs_per_s"], 3
        )
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    if failures or (args.check_targets and not all(met.values())):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
