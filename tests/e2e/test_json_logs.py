"""``--log-format json`` on a real ``stepd serve`` and a real ``stepd-worker``:
every stderr line is one JSON object, with the run, the RPC and the API key's id
as fields, tracebacks inside a field, and no secret anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stepd import Client
from stepd.server.security.keys import key_id_of
from tests.e2e import log_workflows as lw
from tests.e2e.harness import ROOT, SERVER_READY, WORKER_READY, console_script
from tests.e2e.test_security import admin_key, stepd

# gRPC's C core writes its own lines to stderr; they are not stepd's log.
QUIET_GRPC = {"GRPC_VERBOSITY": "NONE"}


class Process:
    """A command with its stdout read line by line and its stderr in a file."""

    def __init__(self, argv: list[str], stderr: Path, env: dict[str, str]) -> None:
        self.stderr_path = stderr
        with stderr.open("wb") as file:  # the child keeps its own copy
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=os.environ | QUIET_GRPC | env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=file,
                text=True,
                start_new_session=True,
            )

    def first_line(self) -> str:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline().rstrip("\n")  # flushed at once, or this blocks
        assert line, f"no ready line; stderr:\n{self.stderr_path.read_text()}"
        return line

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.communicate(timeout=10)
        return self.popen.returncode

    def lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each parsed as JSON (failing on any other line)."""
        parsed = []
        for line in self.stderr_path.read_text().splitlines():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
        return parsed


def worker_key(database: str) -> str:
    done = stepd(
        "keys", "create", "--role", "worker", "--name", "w", "--workflow", "e2e.*",
        "--database", database,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_server_and_worker_log_one_json_object_per_line(
    database: str, tmp_path: Path
) -> None:
    admin, worker_secret = admin_key(database), worker_key(database)
    server = Process(
        [
            *console_script("stepd", "stepd.server.cli"),
            "serve", "--address", "127.0.0.1:0", "--database", database, "--auth", "keys",
            "--http-address", "off", "--log-level", "INFO",
        ],
        tmp_path / "server.stderr",
        {"STEPD_LOG_FORMAT": "json"},
    )  # fmt: skip
    worker: Process | None = None
    tag = uuid.uuid4().hex[:12]
    try:
        ready = SERVER_READY.match(server.first_line())
        assert ready, "the server's ready line"
        address = f"{ready[1]}:{ready[2]}"
        worker = Process(
            [
                *console_script("stepd-worker", "stepd.cli"),
                "tests.e2e.log_workflows", "--server", address, "--api-key", worker_secret,
                "--log-format", "json", "--log-level", "info",
            ],
            tmp_path / "worker.stderr",
            {"STEPD_E2E_MARKS": str(tmp_path)},
        )  # fmt: skip
        assert WORKER_READY.match(worker.first_line())
        async with Client(address, api_key=admin) as client:
            handle = await client.trigger(lw.logged, tag)
            assert await handle.result(timeout=60) == "done"
            later = await client.trigger(
                lw.logged, "later", start_at=datetime.now(UTC) + timedelta(hours=1)
            )
            await later.cancel("not needed")
    finally:
        worker_code = worker.stop() if worker is not None else 0
        server_code = server.stop()
    assert (worker_code, server_code) == (0, 0)

    server_lines, worker_lines = server.lines(), worker.lines()
    for line in server_lines + worker_lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
        text = json.dumps(line)
        assert admin not in text and worker_secret not in text, "a secret was logged"

    admin_id, worker_id = key_id_of(admin), key_id_of(worker_secret)
    (cancelled,) = [line for line in server_lines if line.get("rpc") == "CancelRun"]
    assert cancelled["key_id"] == admin_id and cancelled["run_id"] == later.run_id
    assert cancelled["workflow"] == "e2e.logs.run" and cancelled["level"] == "INFO"
    opened = [line for line in server_lines if "worker stream opened" in line["message"]]
    assert opened and opened[0]["rpc"] == "PollTask" and opened[0]["key_id"] == worker_id

    retry = [line for line in worker_lines if "attempt 1 failed" in line["message"]]
    assert retry, [line["message"] for line in worker_lines]
    assert retry[0]["run_id"] == handle.run_id
    assert retry[0]["workflow"] == "e2e.logs.run" and retry[0]["lease"] > 0
    (caught,) = [line for line in worker_lines if line["logger"] == "e2e.logs"]
    assert caught["level"] == "ERROR" and caught["run_id"] == handle.run_id
    assert caught["message"] == f"the step of {tag} caught an error"
    assert "Traceback" in caught["traceback"] and "KeyError" in caught["traceback"]
    # docs/observability.md's example lines have the fields of real ones.
    real = [set(line) for line in server_lines + worker_lines]
    for example in documented_lines():
        assert set(example) in real, f"no real line has the fields of {example}"


def documented_lines() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "observability.md").read_text()
    logs = text[text.index("## Logs\n") :]
    block = logs.split("```json\n", 1)[1].split("```", 1)[0]
    lines = [json.loads(line) for line in block.splitlines()]
    assert len(lines) == 3
    return lines


def test_a_bad_log_format_is_a_usage_error() -> None:
    done = stepd("serve", "--log-format", "xml")
    assert done.returncode == 2 and "--log-format='xml' must be one of text, json" in done.stderr
    worker = subprocess.run(
        [*console_script("stepd-worker", "stepd.cli"), "tests.e2e.log_workflows"],
        cwd=ROOT,
        env=os.environ | {"STEPD_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 2 and "must be text or json" in worker.stderr
