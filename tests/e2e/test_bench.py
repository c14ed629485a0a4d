"""The benchmark command works end to end (a tiny run, not a measurement)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import SKIP_POSTGRES, postgres_url
from tests.e2e.harness import ROOT


def test_bench_runs_and_reports_json(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--runs", "60", "--repeat", "1"]
    argv += ["--latency-runs", "10", "--warmup", "2", "--in-flight", "20", "--output", str(output)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert json.loads(output.read_text()) == report
    assert report["failures"] == 0
    (rep,) = report["repetitions"]
    assert rep["w1"]["runs"] == 60 and rep["w1"]["steps"] == 180
    assert rep["w1"]["runs_per_s"] > 0 and rep["w2"]["runs"] == 10
    assert set(report["median"]) == {"w1_runs_per_s", "w1_steps_per_s", "w2_p50_ms", "w2_p99_ms"}
    assert 0 < report["median"]["w2_p50_ms"] <= report["median"]["w2_p99_ms"]


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
