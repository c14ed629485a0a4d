"""Benchmark stepd: one command, JSON out.

``python bench/run.py [--runs 2000] [--repeat 3] [--workloads w1,...,w5]
[--database URL] [--security off|on|both]``

Each repetition starts a fresh server (new SQLite file, default durability:
WAL with synchronous=FULL) and one worker serving ``bench.workflows``, both as
separate processes, then measures

* W1, throughput: ``--runs`` runs of a 3-step workflow, triggered concurrently
  (at most ``--in-flight`` Trigger calls at once, 64 by default, each result
  awaited as soon as its run exists); runs/s and steps/s from the first trigger to the last
  result, the CPU seconds of each process, and the server's peak memory;
* W2, latency: ``--latency-runs`` runs of a 1-step workflow one after the
  other; p50/p99 of trigger -> result in milliseconds;
* W3, a long run: one run of ``--w3-steps`` (1,000) sequential steps; seconds
  from trigger to result, and the time its first and its last 100 steps took
  (a cost that grows with the journal makes the last slower);
* W4, timers in a burst: ``--w4-runs`` (1,000) runs triggered at once, each
  sleeping ``--w4-seconds`` (2) durably between two steps; wake-up lateness
  p50/p99 in milliseconds (when the workflow ran again after the sleep minus
  when it asked to wake, by the worker's clock);
* W5, fan-out: one run of ``--w5-steps`` (500) steps at once
  (``asyncio.gather``); seconds from trigger to result.

``--workloads`` picks some of them (default: all five, in that order).
``--database postgresql://...`` runs them on PostgreSQL (the same database for
every repetition) instead of a fresh SQLite file. With ``--fresh-database``
each repetition gets a new, migrated database on that server (dropped after
it), as SQLite gets a new file: on the development machine one shared
database, grown by every repetition, gave W1 from 267 to 431 runs/s with the
same code in one evening, fresh databases 367 to 414.

``--w1-call execute`` runs W1 as ``--in-flight`` callers that each start a run and
wait for its result in one call (``Client.execute``: ``Trigger`` with ``wait``)
instead of Trigger calls with every result awaited beside them.

``--concurrency-keys N`` runs W1 on a workflow with a concurrency limit of 1
per key (``Concurrency(key="customer", limit=1)``), the runs spread over N
keys in turn (issue 17 measures it with 1,000 keys against W1 without).

``--security on`` runs the server with TLS, API keys and a hook secret (the
certificates and keys are made for the run; the client and the worker use
them); ``both`` runs each repetition without, then with them, and reports
both medians and their ratio (the cost of security, measured in one sitting).

``--telemetry on`` runs the server with ``--otel`` and its HTTP listener
(metrics, health, webhooks; on by default) and the worker with ``--otel``, both
exporting every span to an OTLP/HTTP receiver in a process of its own
(``bench/otlp_sink.py``; the spans it counted are reported); ``off`` runs the
server with ``--http-address off`` and no tracing; ``both`` runs each
repetition both ways, in turns (off first in odd repetitions, on first in
even ones), and reports both medians, the ratio of the W1 medians and each
repetition's on/off ratio (the cost of seeing runs, measured in one sitting).

Prints JSON (every repetition and the medians) and writes it to
``bench/results/latest.json`` (or ``--output``). Exits 1 when a run failed, or
when a target was missed with ``--check-targets``.
"""

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench.expired import left as expired_left  # noqa: E402
from bench.expired import seed as seed_expired  # noqa: E402
from bench.workflows import (  # noqa: E402
    clocked_steps,
    one_step,
    parallel_steps,
    sleeper,
    three_steps,
    three_steps_limited,
)
from stepd import Client  # noqa: E402
from tests.backends import PostgresDatabases  # noqa: E402
from tests.e2e.harness import ManagedProcess, Stack, console_script  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latest.json"
WORKLOADS = ("w1", "w2", "w3", "w4", "w5")
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


def peak_memory_mib(pid: int) -> float:
    """A process's peak resident set size so far (Linux VmHWM) in MiB, 0.0 when unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def percentile(values: list[float], pct: int) -> float:
    """The pct-th percentile (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


async def throughput(
    clients: Sequence[Client], runs: int, in_flight: int, keys: int = 0, call: str = "trigger"
) -> dict[str, Any]:
    """W1: trigger ``runs`` 3-step runs concurrently (through the clients in turn:
    one per server replica); time until the last result. With ``keys``, the
    workflow has a concurrency limit of 1 per key and run i has key i % keys.
    ``call`` "execute": ``in_flight`` callers each start a run and wait for its
    result in one call (``Client.execute``), instead of ``in_flight`` Trigger
    calls at once with every result awaited beside them."""
    limit = asyncio.Semaphore(in_flight)
    failures: list[str] = []

    async def one(index: int) -> None:
        async with limit:
            client = clients[index % len(clients)]
            if call == "execute":
                result = await client.execute(three_steps, index)
                if result != 2 * index + 1:
                    failures.append(f"run {index}: expected {2 * index + 1}, got {result!r}")
                return
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


async def long_run(client: Client, steps: int) -> dict[str, Any]:
    """W3: one run of ``steps`` sequential steps."""
    started = time.perf_counter()
    clocks = await client.execute(clocked_steps, steps)
    elapsed = time.perf_counter() - started
    if len(clocks) != steps:
        raise RuntimeError(f"clocked_steps({steps}) returned {len(clocks)} clocks")
    window = min(100, steps - 1)
    return {
        "steps": steps,
        "seconds": round(elapsed, 3),
        "first_100_steps_s": round(clocks[window] - clocks[0], 3),
        "last_100_steps_s": round(clocks[-1] - clocks[-1 - window], 3),
    }


async def timer_burst(client: Client, runs: int, seconds: float, in_flight: int) -> dict[str, Any]:
    """W4: ``runs`` runs started at once, each sleeping ``seconds``; how late they woke."""
    limit = asyncio.Semaphore(in_flight)

    async def one() -> float:
        async with limit:
            handle = await client.trigger(sleeper, seconds)
        return float(await handle.result())

    started = time.perf_counter()
    late_ms = [late * 1000 for late in await asyncio.gather(*(one() for _ in range(runs)))]
    return {
        "runs": runs,
        "sleep_seconds": seconds,
        "seconds": round(time.perf_counter() - started, 3),
        "lateness_p50_ms": round(percentile(late_ms, 50), 2),
        "lateness_p99_ms": round(percentile(late_ms, 99), 2),
        "lateness_max_ms": round(max(late_ms), 2),
    }


async def fan_out(client: Client, steps: int) -> dict[str, Any]:
    """W5: one run of ``steps`` parallel steps."""
    started = time.perf_counter()
    total = await client.execute(parallel_steps, steps)
    elapsed = time.perf_counter() - started
    if total != steps * (steps - 1) // 2:
        raise RuntimeError(f"parallel_steps({steps}) returned {total!r}")
    return {"steps": steps, "seconds": round(elapsed, 3)}


async def measure(
    address: str,
    processes: dict[str, ManagedProcess],
    args: Any,
    client_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Warm up, then the chosen workloads against one server."""
    chosen = args.workloads
    result: dict[str, Any] = {}
    async with Client(address, **(client_options or {})) as client:
        await asyncio.gather(*(client.execute(three_steps, i) for i in range(args.warmup)))
        await asyncio.gather(*(client.execute(one_step, i) for i in range(args.warmup)))
        if "w1" in chosen:
            with CpuMeter(processes) as w1_cpu:
                w1 = await asyncio.wait_for(
                    throughput(
                        [client], args.runs, args.in_flight, args.concurrency_keys, args.w1_call
                    ),
                    args.timeout,
                )
            w1["cpu_seconds"] = w1_cpu.used
            w1["server_peak_memory_mib"] = peak_memory_mib(processes["server"].pid)
            result["w1"] = w1
        if "w2" in chosen:
            result["w2"] = await asyncio.wait_for(latency(client, args.latency_runs), args.timeout)
        if "w3" in chosen:
            result["w3"] = await asyncio.wait_for(long_run(client, args.w3_steps), args.timeout)
        if "w4" in chosen:
            burst = timer_burst(client, args.w4_runs, args.w4_seconds, args.in_flight)
            result["w4"] = await asyncio.wait_for(burst, args.timeout)
        if "w5" in chosen:
            result["w5"] = await asyncio.wait_for(fan_out(client, args.w5_steps), args.timeout)
    return result


def make_key(database: Path | str, role: str, *more: str) -> str:
    """An API key made on the database before the server starts."""
    argv = [*console_script("stepd", "stepd.server.cli"), "keys", "create", "--role", role]
    argv += ["--name", f"bench-{role}", *more, "--database", str(database)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def secure_setup(
    workdir: Path, database: Path | str
) -> tuple[list[str], list[str], dict[str, Any]]:
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


SINK_READY = re.compile(r"^listening on (\d+)$")


class OtlpSink:
    """``bench/otlp_sink.py`` running beside the bench: where traced processes send spans."""

    def __init__(self, process: ManagedProcess, port: int) -> None:
        self.process = process
        self.endpoint = f"http://127.0.0.1:{port}"

    def spans(self) -> int:
        """How many spans it has received so far."""
        with urllib.request.urlopen(f"{self.endpoint}/spans", timeout=10) as answer:
            return int(answer.read())

    def environment(self, service: str) -> dict[str, str]:
        """The environment of a process that exports its spans here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": service,
        }


@contextmanager
def otlp_sink(workdir: Path) -> Iterator[OtlpSink]:
    """Start the span receiver; stop it when the block ends."""
    argv = [sys.executable, str(ROOT / "bench" / "otlp_sink.py")]
    process = ManagedProcess("otlp-sink", argv, workdir / "otlp-sink.log")
    try:
        ready = process.wait_for_line(SINK_READY)
        yield OtlpSink(process, int(ready[1]))
    finally:
        process.stop()


def repetition(
    number: int,
    args: Any,
    *,
    secure: bool = False,
    telemetry: str = "default",
    sink: OtlpSink | None = None,
    fresh: PostgresDatabases | None = None,
) -> dict[str, Any]:
    """Start a fresh server and worker, measure, stop them. ``telemetry`` is
    "default" (the server's defaults), "off" (no HTTP listener, no tracing) or
    "on" (HTTP listener, and every span sent to ``sink``). With ``fresh``, on a
    new PostgreSQL database made there."""
    workdir = Path(tempfile.mkdtemp(prefix=f"stepd-bench-{number}-"))
    stack = Stack(workdir)
    keep_logs = True
    sqlite_file = workdir / "bench.db"
    database: Path | str = args.database or sqlite_file
    if fresh is not None:
        database = fresh.create()
    server_args: list[str] = list(args.server_arg)
    worker_args: list[str] = []
    client_options: dict[str, Any] = {}
    if secure:
        more_server, worker_args, client_options = secure_setup(workdir, database)
        server_args += more_server
    server_env: dict[str, str] = {}
    worker_env: dict[str, str] = {}
    if telemetry == "off":
        server_args += ["--http-address", "off"]
    elif telemetry == "on":
        if sink is None:
            raise ValueError("telemetry on needs the span receiver")
        server_args.append("--otel")
        worker_args.append("--otel")
        server_env, worker_env = sink.environment("bench-server"), sink.environment("bench-worker")
    if args.expired_runs:
        seed_expired(sqlite_file, args.expired_runs, int(time.time() * 1000))
    spans_before = sink.spans() if sink is not None and telemetry == "on" else 0
    result: dict[str, Any] = {}
    try:
        server = stack.start_server(database, args=server_args, env=server_env)
        worker = stack.start_worker(
            server,
            ["bench.workflows"],
            concurrency=args.worker_concurrency,
            args=worker_args,
            env=worker_env,
        )
        processes = {"server": server.process, "worker": worker}
        result = asyncio.run(measure(server.address, processes, args, client_options))
        result["security"] = "on" if secure else "off"
        result["telemetry"] = telemetry
        if args.expired_runs:
            result["expired_runs_left"] = expired_left(sqlite_file, int(time.time() * 1000))
        keep_logs = result.get("w1", {}).get("failures", 0) > 0
        return result
    finally:
        codes = stack.close()
        if fresh is not None:
            fresh.drop(str(database))
        if keep_logs:
            for process in stack.processes:
                print(f"--- {process.name} log ({workdir}) ---", file=sys.stderr)
                print(process.log_tail(40), file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            print(f"warning: processes did not exit cleanly: {unclean}", file=sys.stderr)
        if sink is not None and telemetry == "on":
            # Read after the processes stopped: they send what they still held as they exit.
            result["spans_exported"] = sink.spans() - spans_before


#: The medians reported, by workload: (name, workload, field).
MEDIANS = (
    ("w1_runs_per_s", "w1", "runs_per_s"),
    ("w1_steps_per_s", "w1", "steps_per_s"),
    ("w2_p50_ms", "w2", "p50_ms"),
    ("w2_p99_ms", "w2", "p99_ms"),
    ("w3_seconds", "w3", "seconds"),
    ("w3_first_100_steps_s", "w3", "first_100_steps_s"),
    ("w3_last_100_steps_s", "w3", "last_100_steps_s"),
    ("w4_lateness_p50_ms", "w4", "lateness_p50_ms"),
    ("w4_lateness_p99_ms", "w4", "lateness_p99_ms"),
    ("w5_seconds", "w5", "seconds"),
)


def medians(reps: list[dict[str, Any]]) -> dict[str, float]:
    """The medians over repetitions of each measured workload's figures."""
    found: dict[str, float] = {}
    for name, workload, field in MEDIANS:
        if reps and workload in reps[0]:
            found[name] = round(statistics.median(rep[workload][field] for rep in reps), 2)
    return found


def summary(rep: dict[str, Any]) -> str:
    """One line of a repetition's figures."""
    parts = []
    if "w1" in rep:
        parts.append(f"W1 {rep['w1']['runs_per_s']} runs/s")
    if "w2" in rep:
        parts.append(f"W2 p50 {rep['w2']['p50_ms']} ms, p99 {rep['w2']['p99_ms']} ms")
    if "w3" in rep:
        parts.append(f"W3 {rep['w3']['seconds']} s")
    if "w4" in rep:
        w4 = rep["w4"]
        parts.append(f"W4 late p50 {w4['lateness_p50_ms']} ms, p99 {w4['lateness_p99_ms']} ms")
    if "w5" in rep:
        parts.append(f"W5 {rep['w5']['seconds']} s")
    return "; ".join(parts)


def add_compared(report: dict[str, Any], name: str, reps: list[dict[str, Any]]) -> None:
    """Add the repetitions of a ``both`` comparison, their medians and the ratio of
    their W1 median to the plain one's."""
    compared_median = medians(reps)
    report[f"repetitions_{name}"] = reps
    report[f"median_{name}"] = compared_median
    plain = report["median"]
    if "w1_runs_per_s" in plain:
        ratio = compared_median["w1_runs_per_s"] / plain["w1_runs_per_s"]
        report[f"w1_{name}_ratio"] = round(ratio, 3)


def run_repetitions(
    args: Any, sink: OtlpSink | None, fresh: PostgresDatabases | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every repetition: (the plain ones, the ones with security or telemetry on
    when ``both`` compares them); each on a new database of ``fresh`` if given."""
    reps: list[dict[str, Any]] = []
    other_reps: list[dict[str, Any]] = []
    for number in range(1, args.repeat + 1):
        variants: list[tuple[bool, str]]
        if args.security == "both":
            variants = [(False, args.telemetry), (True, args.telemetry)]
        elif args.telemetry == "both":
            # In turns, so that a machine getting slower or faster favours neither.
            variants = [(False, "off"), (False, "on")][:: 1 if number % 2 else -1]
        else:
            variants = [(args.security == "on", args.telemetry)]
        for secure, telemetry in variants:
            rep = repetition(
                number, args, secure=secure, telemetry=telemetry, sink=sink, fresh=fresh
            )
            notes = [note for note, on in (("security on", secure),) if on]
            if telemetry != "default":
                notes.append(f"telemetry {telemetry}")
            label = f" ({', '.join(notes)})" if notes else ""
            print(f"repetition {number}{label}: {summary(rep)}", file=sys.stderr)
            compared = (secure and args.security == "both") or (
                telemetry == "on" and args.telemetry == "both"
            )
            (other_reps if compared else reps).append(rep)
    return reps, other_reps


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
    parser.add_argument(
        "--w1-call",
        choices=("trigger", "execute"),
        default="trigger",
        help="W1's calls: trigger (the default: --in-flight Trigger calls at once, each "
        "result awaited beside them) or execute (--in-flight callers, each starting a run "
        "and waiting for its result in one call)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        default=64,
        help="concurrent Trigger calls in W1 and W4 (default 64, as the comparison with "
        "other engines used)",
    )
    parser.add_argument("--latency-runs", type=int, default=200, help="W2 runs (default 200)")
    parser.add_argument("--w3-steps", type=int, default=1000, help="W3 steps (default 1000)")
    parser.add_argument("--w4-runs", type=int, default=1000, help="W4 runs (default 1000)")
    parser.add_argument(
        "--w4-seconds", type=float, default=2.0, help="W4 sleep per run (default 2)"
    )
    parser.add_argument("--w5-steps", type=int, default=500, help="W5 steps (default 500)")
    parser.add_argument(
        "--workloads",
        type=lambda text: [w.strip().lower() for w in text.split(",") if w.strip()],
        default=list(WORKLOADS),
        help="comma-separated, of w1,w2,w3,w4,w5 (default: all)",
    )
    parser.add_argument(
        "--database", help="postgresql://... URL (default: a fresh SQLite file per repetition)"
    )
    parser.add_argument(
        "--fresh-database",
        action="store_true",
        help="with --database: each repetition on a new database on that server",
    )
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
        "--telemetry",
        choices=["default", "off", "on", "both"],
        default="default",
        help="HTTP listener, metrics and OpenTelemetry spans: the server's defaults, off, "
        "on (every span exported), or both (each repetition twice)",
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
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown or not args.workloads:
        parser.error(f"--workloads: choose from {','.join(WORKLOADS)} (got {unknown or 'none'})")
    if args.database and args.expired_runs:
        parser.error("--expired-runs seeds a SQLite file: leave out --database")

    if args.w1_call == "execute" and args.concurrency_keys:
        parser.error("--w1-call execute runs the plain workflow: leave out --concurrency-keys")
    if args.fresh_database and not args.database:
        parser.error("--fresh-database makes PostgreSQL databases: give --database too")
    if args.security == "both" and args.telemetry == "both":
        parser.error("--security both and --telemetry both: compare one thing at a time")
    with ExitStack() as cleanup:
        sink = None
        if args.telemetry in ("on", "both"):
            sink_dir = Path(tempfile.mkdtemp(prefix="stepd-bench-sink-"))
            cleanup.callback(shutil.rmtree, sink_dir, ignore_errors=True)
            sink = cleanup.enter_context(otlp_sink(sink_dir))
        fresh = None
        if args.fresh_database:
            fresh = PostgresDatabases(args.database)
            cleanup.callback(fresh.close)
        reps, other_reps = run_repetitions(args, sink, fresh)
    secure_reps = other_reps if args.security == "both" else []
    telemetry_reps = other_reps if args.telemetry == "both" else []

    median = medians(reps)
    met = {}
    if "w1_runs_per_s" in median:
        met["w1_runs_per_s"] = median["w1_runs_per_s"] >= TARGETS["w1_runs_per_s"]
    if "w2_p50_ms" in median:
        met["w2_p50_ms"] = median["w2_p50_ms"] <= TARGETS["w2_p50_ms"]
    failures = sum(rep.get("w1", {}).get("failures", 0) for rep in (*reps, *other_reps))
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
            "workloads": args.workloads,
            "w3_steps": args.w3_steps,
            "w4_runs": args.w4_runs,
            "w4_seconds": args.w4_seconds,
            "w5_steps": args.w5_steps,
            "database": "postgresql" if args.database else "sqlite",
            "fresh_database": bool(args.database) and args.fresh_database,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "worker_concurrency": args.worker_concurrency or "default",
            "concurrency_keys": args.concurrency_keys,
            "w1_call": args.w1_call,
            "server_args": args.server_arg,
            "security": args.security,
            "telemetry": args.telemetry,
        },
        "repetitions": reps,
        "median": median,
        "targets": TARGETS,
        "targets_met": met,
        "failures": failures,
    }
    if secure_reps:
        add_compared(report, "secure", secure_reps)
    if telemetry_reps:
        add_compared(report, "telemetry", telemetry_reps)
        if "w1_runs_per_s" in median:
            report["w1_telemetry_ratios"] = [
                round(on["w1"]["runs_per_s"] / off["w1"]["runs_per_s"], 3)
                for off, on in zip(reps, telemetry_reps, strict=True)
            ]
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    if failures or (args.check_targets and not all(met.values())):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
