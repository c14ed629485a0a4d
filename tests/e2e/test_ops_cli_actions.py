"""The commands that change runs (``stepd runs retry | fork | delete``, ``runs cancel``
and ``runs retry`` by filter) and ``stepd workers list``, against a real server and
worker processes: what they do, their human and JSON output, their exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import grpc

from stepd.v1 import workflow_service_pb2 as api
from stepd.v1 import workflow_service_pb2_grpc
from tests.e2e.harness import ROOT, Server, Stack, console_script
from tests.e2e.test_ops_cli import OPS, TIMEOUT, ok, stepd

BULK_RUNS = 50


def _one_line_error(done: subprocess.CompletedProcess[str], server: Server, code: str) -> None:
    assert done.returncode == 1, done
    assert done.stderr.startswith(f"stepd: {server.address}: {code}: "), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_retry_fork_and_delete_do_what_they_say(
    stack: Stack, server: Server, tmp_path: Path
) -> None:
    stack.start_worker(server, OPS)
    gate = tmp_path / "gate"
    data = json.dumps({"gate": str(gate)})
    failed = stepd(
        server, "runs", "start", "ops.gated", "--input", data, "--run-id", "g-1", "--wait"
    )
    assert failed.returncode == 3 and "the gate" in failed.stderr

    # Retry after "the code was fixed": the failed run moves on and completes.
    gate.touch()
    retried = ok(stepd(server, "runs", "retry", "g-1", "--reason", "gate fixed"))
    assert retried.strip() == "retried run g-1: it resumes where it stopped"
    assert ok(stepd(server, "runs", "history", "g-1", "--follow")).splitlines()[-1].split()[2] == (
        "completed"
    )
    shown = json.loads(ok(stepd(server, "runs", "show", "g-1", "--json")))
    assert shown["run"]["status"] == "completed" and shown["run"]["retry_count"] == 1
    assert shown["run"]["result"] == {"total": 1, "gate": "open"}
    history = json.loads(ok(stepd(server, "runs", "history", "g-1", "--json")))
    assert "retried" in [entry["type"] for entry in history]
    # A completed run cannot be retried.
    _one_line_error(stepd(server, "runs", "retry", "g-1"), server, "FAILED_PRECONDITION")

    # Fork from the first step: a new run naming the original.
    forked = stepd(server, "runs", "fork", "g-1", "--from-step", "count", "--run-id", "g-2")
    assert ok(forked).strip() == "g-2"
    assert "fork of g-1 from step count" in forked.stderr
    assert ok(stepd(server, "runs", "history", "g-2", "--follow")).splitlines()[-1].split()[2] == (
        "completed"
    )
    human = ok(stepd(server, "runs", "show", "g-2"))
    assert "forked from: g-1 (step count)" in " ".join(human.split("  "))
    by_request = ["runs", "fork", "g-1", "--from-step", "count", "--request-id", "r-1", "--json"]
    first = json.loads(ok(stepd(server, *by_request)))
    again = json.loads(ok(stepd(server, *by_request)))
    assert first["already_existed"] is False and again["already_existed"] is True
    assert first["run"]["run_id"] == again["run"]["run_id"] != "g-2"
    assert first["run"]["forked_from_run_id"] == "g-1"
    original = json.loads(ok(stepd(server, "runs", "history", "g-1", "--json")))
    assert {"g-2", first["run"]["run_id"]} <= {e.get("detail") for e in original}
    _one_line_error(
        stepd(server, "runs", "fork", "g-1", "--from-step", "nope"), server, "FAILED_PRECONDITION"
    )

    # Delete: a finished run goes, an unfinished one is refused.
    unfinished = ok(stepd(server, "runs", "start", "ops.progress", "--input", "{}")).strip()
    _one_line_error(stepd(server, "runs", "delete", unfinished), server, "FAILED_PRECONDITION")
    assert json.loads(ok(stepd(server, "runs", "show", unfinished, "--json")))["run"]["run_id"]
    assert ok(stepd(server, "runs", "delete", "g-2")).strip() == "deleted run g-2"
    _one_line_error(stepd(server, "runs", "show", "g-2"), server, "NOT_FOUND")
    deleted = json.loads(ok(stepd(server, "runs", "delete", first["run"]["run_id"], "--json")))
    assert deleted == {"run_id": first["run"]["run_id"]}
    _one_line_error(stepd(server, "runs", "delete", "g-2"), server, "NOT_FOUND")


def _trigger(server: Server, workflow: str, count: int) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        for _ in range(count):
            stub.Trigger(api.TriggerRequest(workflow_name=workflow), timeout=TIMEOUT)


def _statuses(server: Server, workflow: str) -> list[str]:
    listed = stepd(server, "runs", "list", "--workflow", workflow, "--limit", "1000", "--json")
    return sorted({run["status"] for run in json.loads(ok(listed))})


def test_bulk_cancel_and_retry_by_filter_count_first_and_a_second_run_changes_nothing(
    server: Server,
) -> None:
    name = "ops.nobody_serves_this"
    _trigger(server, name, BULK_RUNS)
    _trigger(server, "ops.other_nobody_serves_this", 1)
    by_filter = ["runs", "cancel", "--workflow", name, "--status", "pending"]

    counted = stepd(server, *by_filter, "--dry-run")
    assert ok(counted).strip() == f"would cancel {BULK_RUNS} run(s)"
    counted_json = json.loads(ok(stepd(server, *by_filter, "--dry-run", "--json")))
    assert counted_json == {"dry_run": True, "matched": BULK_RUNS, "changed": 0, "skipped": 0}
    # Not a terminal and no --yes: nothing is done.
    refused = stepd(server, *by_filter, "--reason", "cleanup")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"stepd: cancel {BULK_RUNS} run(s)? stdin is not a terminal: pass --yes"
    )
    assert _statuses(server, name) == ["pending"]

    done = stepd(server, *by_filter, "--reason", "cleanup", "--yes", "--batch-size", "20")
    assert ok(done).strip() == f"cancelled {BULK_RUNS} run(s) ({BULK_RUNS} looked at, 0 skipped)"
    progress = done.stderr.splitlines()
    assert progress == [
        "batch 1: 20/50 cancelled, 20 looked at, 0 skipped",
        "batch 2: 40/50 cancelled, 40 looked at, 0 skipped",
        "batch 3: 50/50 cancelled, 50 looked at, 0 skipped",
    ]
    assert _statuses(server, name) == ["cancelled"]
    assert _statuses(server, "ops.other_nobody_serves_this") == ["pending"]
    # A second run changes nothing.
    assert ok(stepd(server, *by_filter, "--yes")).strip() == "no run to cancel"
    again = json.loads(ok(stepd(server, "runs", "cancel", "--workflow", name, "--yes", "--json")))
    assert again == {"dry_run": False, "matched": 0, "changed": 0, "skipped": 0}

    # Bulk retry: the cancelled runs are pending again, once.
    retry = ["runs", "retry", "--workflow", name, "--status", "cancelled"]
    assert ok(stepd(server, *retry, "--dry-run")).strip() == f"would retry {BULK_RUNS} run(s)"
    retried = json.loads(ok(stepd(server, *retry, "--yes", "--json")))
    assert retried == {
        "dry_run": False,
        "matched": BULK_RUNS,
        "changed": BULK_RUNS,
        "skipped": 0,
        "batches": 1,
    }
    assert _statuses(server, name) == ["pending"]
    assert ok(stepd(server, *retry, "--yes")).strip() == "no run to retry"


def test_bulk_cancel_asks_on_a_terminal(server: Server) -> None:
    name = "ops.asked_nobody_serves_this"
    _trigger(server, name, 2)
    argv = [*console_script("stepd", "stepd.server.cli"), "runs", "cancel", "--workflow", name]
    for answer, code in ((b"n\n", 1), (b"y\n", 0)):
        parent, child = pty.openpty()
        try:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=os.environ | {"STEPD_ADDRESS": server.address},
                stdin=child,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            os.write(parent, answer)
            out, err = process.communicate(timeout=TIMEOUT)
        finally:
            os.close(parent)
            os.close(child)
        assert process.returncode == code, err
        assert b"cancel 2 run(s)? [y/N]" in err
        if code == 1:
            assert err.decode().endswith("stepd: not confirmed: nothing done\n")
            assert _statuses(server, name) == ["pending"]
        else:
            assert out.decode().strip() == "cancelled 2 run(s) (2 looked at, 0 skipped)"
            assert _statuses(server, name) == ["cancelled"]


def test_cancel_and_retry_need_a_run_or_a_filter_but_not_both(server: Server) -> None:
    for args in (
        ("runs", "cancel"),
        ("runs", "retry"),
        ("runs", "cancel", "r-1", "--workflow", "w"),
        ("runs", "retry", "r-1", "--status", "failed"),
        ("runs", "cancel", "r-1", "--yes"),
        ("runs", "retry", "--workflow", "w", "--clear-deadline"),
        ("runs", "cancel", "--workflow", "w", "--batch-size", "0"),
    ):
        done = stepd(server, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("stepd: ") and len(done.stderr.splitlines()) == 1
    both = stepd(
        server, "runs", "retry", "r-1", "--deadline", "2030-01-01T00:00:00Z", "--clear-deadline"
    )
    assert both.returncode == 2 and "not allowed with" in both.stderr
    # The single-run forms still work.
    missing = stepd(server, "runs", "cancel", "missing")
    _one_line_error(missing, server, "NOT_FOUND")
    _one_line_error(stepd(server, "runs", "retry", "missing"), server, "NOT_FOUND")


def test_workers_list_shows_the_connected_worker(stack: Stack, server: Server) -> None:
    assert ok(stepd(server, "workers", "list", "--json")).strip() == "[]"
    stack.start_worker(server, OPS, concurrency=7)
    workers = json.loads(ok(stepd(server, "workers", "list", "--json")))
    assert len(workers) == 1
    worker = workers[0]
    served = {(w["name"], w["version"]) for w in worker["workflows"]}
    assert ("ops.echo", "1") in served and ("ops.gated", "1") in served
    assert worker["capacity"] == 7 and worker.get("runs_held", 0) == 0
    assert worker["identity"] and worker["replica_id"] and worker["last_heartbeat_time"]
    lines = ok(stepd(server, "workers", "list")).splitlines()
    assert lines[0].split() == [
        "IDENTITY",
        "WORKFLOWS",
        "CAPACITY",
        "HELD",
        "HEARTBEAT",
        "REPLICA",
        "STATE",
    ]
    assert len(lines) == 2
    row = lines[1].split()
    assert row[0] == worker["identity"] and "ops.echo@1" in row[1].split(",")
    assert row[2:4] == ["7", "0"] and row[5] == worker["replica_id"] and row[6] == "serving"
