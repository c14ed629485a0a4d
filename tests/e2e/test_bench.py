"""The benchmark command works end to end (a tiny run, not a measurement)."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import SKIP_POSTGRES, postgres_url, query
from tests.e2e.harness import ROOT


def test_bench_runs_all_five_workloads_and_reports_json(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--runs", "60", "--repeat", "1"]
    argv += ["--latency-runs", "10", "--warmup", "2", "--in-flight", "20", "--output", str(output)]
    argv += ["--w3-steps", "30", "--w4-runs", "20", "--w4-seconds", "0.3", "--w5-steps", "25"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert json.loads(output.read_text()) == report
    assert report["failures"] == 0
    (rep,) = report["repetitions"]
    assert rep["w1"]["runs"] == 60 and rep["w1"]["steps"] == 180
    assert rep["w1"]["runs_per_s"] > 0 and rep["w2"]["runs"] == 10
    assert rep["w1"]["server_peak_memory_mib"] > 0
    assert rep["w3"]["steps"] == 30 and rep["w3"]["seconds"] > 0
    assert 0 <= rep["w3"]["first_100_steps_s"] <= rep["w3"]["seconds"]
    assert rep["w4"]["runs"] == 20 and rep["w4"]["sleep_seconds"] == 0.3
    # Lateness is how long after its wake-up time a run went on: never before it.
    assert 0 <= rep["w4"]["lateness_p50_ms"] <= rep["w4"]["lateness_p99_ms"]
    assert rep["w4"]["seconds"] >= 0.3
    assert rep["w5"]["steps"] == 25 and rep["w5"]["seconds"] > 0
    assert set(report["median"]) == {
        "w1_runs_per_s",
        "w1_steps_per_s",
        "w2_p50_ms",
        "w2_p99_ms",
        "w3_seconds",
        "w3_first_100_steps_s",
        "w3_last_100_steps_s",
        "w4_lateness_p50_ms",
        "w4_lateness_p99_ms",
        "w5_seconds",
    }
    assert 0 < report["median"]["w2_p50_ms"] <= report["median"]["w2_p99_ms"]


def test_bench_runs_the_workloads_chosen(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--repeat", "1", "--warmup", "1"]
    argv += ["--workloads", "w5,w3", "--w3-steps", "5", "--w5-steps", "5"]
    argv += ["--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    (rep,) = json.loads(done.stdout)["repetitions"]
    assert {"w3", "w5"} <= set(rep) and not {"w1", "w2", "w4"} & set(rep)

    bad = [sys.executable, str(ROOT / "bench" / "run.py"), "--workloads", "w1,w9"]
    refused = subprocess.run(bad, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "w9" in refused.stderr


def test_bench_gives_each_repetition_a_fresh_postgresql_database(tmp_path: Path) -> None:
    url = postgres_url()
    if url is None:
        pytest.skip(SKIP_POSTGRES)
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--database", url, "--fresh-database"]
    argv += ["--workloads", "w1,w3", "--runs", "30", "--w3-steps", "5", "--repeat", "2"]
    argv += ["--warmup", "1", "--in-flight", "10", "--output", str(output)]
    bench = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = bench.communicate(timeout=180)

    assert bench.returncode == 0, err
    report = json.loads(out)
    assert report["config"]["fresh_database"] is True and report["failures"] == 0
    assert [rep["w1"]["runs"] for rep in report["repetitions"]] == [30, 30]
    # Each repetition's database was dropped after it (and the template at the end).
    left = asyncio.run(
        query(
            url,
            f"SELECT datname FROM pg_database WHERE datname LIKE 'stepd\\_test\\_{bench.pid}\\_%'",
        )
    )
    assert left == []

    alone = [sys.executable, str(ROOT / "bench" / "run.py"), "--fresh-database"]
    refused = subprocess.run(alone, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "--database" in refused.stderr


def test_replicas_bench_runs_and_reports_json(tmp_path: Path) -> None:
    url = postgres_url()
    if url is None:
        pytest.skip(SKIP_POSTGRES)
    output = tmp_path / "replicas.json"
    argv = [sys.executable, str(ROOT / "bench" / "replicas.py"), "--database", url]
    argv += ["--runs", "40", "--repeat", "1", "--warmup", "2", "--in-flight", "20"]
    argv += ["--db-pool-size", "5", "--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert json.loads(output.read_text()) == report
    assert report["failures"] == 0
    (rep,) = report["repetitions"]
    assert rep["one_replica"]["replicas"] == 1 and rep["replicas"]["replicas"] == 3
    assert rep["one_replica"]["runs"] == rep["replicas"]["runs"] == 40
    assert set(report["median"]) == {
        "w1_runs_per_s_1_replica",
        "w1_runs_per_s_3_replicas",
        "ratio",
    }


def test_bench_measures_with_and_without_tls_and_keys(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--runs", "40", "--repeat", "1"]
    argv += ["--latency-runs", "5", "--warmup", "2", "--in-flight", "20", "--security", "both"]
    argv += ["--workloads", "w1,w2"]
    argv += ["--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["failures"] == 0 and report["config"]["security"] == "both"
    ((plain,), (secure,)) = report["repetitions"], report["repetitions_secure"]
    assert (plain["security"], secure["security"]) == ("off", "on")
    assert secure["w1"]["runs"] == 40 and secure["w1"]["runs_per_s"] > 0
    assert report["w1_secure_ratio"] == round(
        report["median_secure"]["w1_runs_per_s"] / report["median"]["w1_runs_per_s"], 3
    )


def test_bench_measures_with_and_without_telemetry(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--runs", "40", "--repeat", "2"]
    argv += ["--warmup", "2", "--in-flight", "20", "--telemetry", "both", "--workloads", "w1"]
    argv += ["--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["failures"] == 0 and report["config"]["telemetry"] == "both"
    plain, traced = report["repetitions"], report["repetitions_telemetry"]
    assert [rep["telemetry"] for rep in plain + traced] == ["off", "off", "on", "on"]
    # Taken in turns: off first, then on first.
    order = [line.split(":")[0] for line in done.stderr.splitlines() if "telemetry" in line]
    assert order == [
        "repetition 1 (telemetry off)",
        "repetition 1 (telemetry on)",
        "repetition 2 (telemetry on)",
        "repetition 2 (telemetry off)",
    ]
    # Every span reached the receiver: Trigger, GetRun, the run and three steps per
    # run, and the warm-up's (two 3-step runs and two 1-step runs, each started and
    # awaited in one Trigger call by Client.execute).
    assert [rep["spans_exported"] for rep in traced] == [40 * 6 + 2 * 5 + 2 * 3] * 2
    assert "spans_exported" not in plain[0]
    ratios = [
        round(on["w1"]["runs_per_s"] / off["w1"]["runs_per_s"], 3)
        for off, on in zip(plain, traced, strict=True)
    ]
    assert report["w1_telemetry_ratios"] == ratios
    assert report["w1_telemetry_ratio"] == round(
        report["median_telemetry"]["w1_runs_per_s"] / report["median"]["w1_runs_per_s"], 3
    )


def test_bench_runs_w1_with_execute_calls(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--repeat", "1", "--warmup", "1"]
    argv += ["--workloads", "w1", "--runs", "20", "--w1-call", "execute"]
    argv += ["--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["config"]["w1_call"] == "execute"
    (rep,) = report["repetitions"]
    assert rep["w1"]["runs"] == 20 and rep["w1"]["failures"] == 0
