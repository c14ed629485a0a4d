"""The operator commands (``stepd runs | schedules | events | hooks``) against a real
server and worker processes: docs/cli.md's examples, live following, JSON output,
exit codes, keys and TLS."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.certs import Certificates, make_certificates
from tests.e2e.harness import ROOT, Server, Stack, console_script, rest_of_output
from tests.e2e.test_security import admin_key, create_key, start_secure_server, tls_args

CLI_DOC = ROOT / "docs" / "cli.md"
OPS = ("tests.e2e.ops_workflows",)
TIMEOUT = 60
#: Commands that only read: run again (for up to RETRY_SECONDS) until their
#: output matches, since the run they look at may not have got there yet.
READ_ONLY = re.compile(r"^stepd (runs (show|list)|schedules (show|list))\b")
RETRY_SECONDS = 30.0


def stepd(
    server: Server | None, *args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``stepd ARGS`` against ``server``; what it did."""
    extra = {"STEPD_ADDRESS": server.address} if server is not None else {}
    return subprocess.run(
        [*console_script("stepd", "stepd.server.cli"), *args],
        cwd=ROOT,
        env=os.environ | extra | (env or {}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    assert done.stderr == "" or not done.stderr.startswith("Traceback"), done.stderr
    return done.stdout


# -- docs/cli.md ----------------------------------------------------------------------


def doc_examples() -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of docs/cli.md's console blocks, each with the output
    lines that follow it."""
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", CLI_DOC.read_text(), flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            else:
                examples[-1][1].append(line)
    return examples


def _pattern(line: str) -> re.Pattern[str]:
    """An expected line as a regex: ``<...>`` matches any text, runs of spaces any
    spacing (tables align to their content)."""
    parts = re.split(r"(<[^>]+>)", " ".join(line.split()))
    regex = "".join(".+?" if p.startswith("<") else re.escape(p) for p in parts)
    return re.compile(regex.replace(r"\ ", r"\s+"))


def _matches(expected: list[str], actual: list[str]) -> bool:
    squeezed = [" ".join(line.split()) for line in actual]
    return len(expected) == len(squeezed) and all(
        _pattern(e).fullmatch(a) for e, a in zip(expected, squeezed, strict=True)
    )


class Shell:
    """One bash process that runs commands in turn (shell variables carry over)."""

    END = "@@end-of-command@@"

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        prefix = " ".join(shlex.quote(a) for a in console_script("stepd", "stepd.server.cli"))
        self.run(f'stepd() {{ {prefix} "$@"; }}')

    def run(self, command: str) -> list[str]:
        """The lines the command printed (stdout and stderr)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{{ {command}\n}} 2>&1; echo {self.END}\n")
        self.process.stdin.flush()
        lines = []
        while (line := self.process.stdout.readline()) != f"{self.END}\n":
            assert line, f"the shell ended while running {command!r}"
            lines.append(line.rstrip("\n"))
        return lines

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


# About 40 commands, each a new process: minutes on a busy machine.
@pytest.mark.timeout(600)
def test_the_examples_in_docs_cli_md_run(stack: Stack, server: Server) -> None:
    stack.start_worker(server, ["examples.report"])
    examples = doc_examples()
    assert len(examples) > 30
    covered = {" ".join(c.split()[1:3]) for c, _ in examples if c.startswith("stepd ")}
    for command in ("runs list", "runs show", "runs history", "runs start", "runs cancel"):
        assert command in covered
    for command in ("runs signal", "events publish", "hooks execute"):
        assert command in covered or any(command in c for c, _ in examples)
    for verb in ("list", "show", "create", "pause", "resume", "delete", "trigger"):
        assert f"schedules {verb}" in covered
    for command in ("runs retry", "runs fork", "runs delete", "workers list"):
        assert command in covered
    assert any(c.startswith("stepd runs cancel --workflow") for c, _ in examples)
    shell = Shell(os.environ | {"STEPD_ADDRESS": server.address, "PYTHONUNBUFFERED": "1"})
    try:
        for command, expected in examples:
            deadline = time.monotonic() + RETRY_SECONDS
            while True:
                actual = shell.run(command)
                if _matches(expected, actual):
                    break
                if not READ_ONLY.match(command) or time.monotonic() > deadline:
                    shown = "\n".join(actual)
                    raise AssertionError(
                        f"$ {command}\nexpected:\n" + "\n".join(expected) + f"\ngot:\n{shown}"
                    )
                time.sleep(0.2)
    finally:
        shell.close()


# -- following live ------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_follow_prints_entries_as_they_are_committed_and_stops_when_the_run_ends(
    stack: Stack, server: Server, as_json: bool
) -> None:
    stack.start_worker(server, OPS)
    run_id = ok(stepd(server, "runs", "start", "ops.progress", "--input", '{"name": "f"}')).strip()
    argv = [*console_script("stepd", "stepd.server.cli"), "runs", "history", run_id, "--follow"]
    follower = subprocess.Popen(
        [*argv, *(["--json"] if as_json else [])],
        cwd=ROOT,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        lines: list[str] = []
        # The run waits for "go": everything up to its suspension is printed while
        # the run (and so the command) has not ended.
        while not any("suspended" in line for line in lines):
            line = follower.stdout.readline()
            assert line, f"the command ended early: {follower.stderr and follower.stderr.read()}"
            lines.append(line.rstrip("\n"))
        assert follower.poll() is None
        ok(stepd(server, "runs", "signal", run_id, "go", "--data", '{"ok": true}'))
        rest, errors = rest_of_output(follower, timeout=TIMEOUT)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, errors
    lines += rest.splitlines()
    if as_json:
        entries = [json.loads(line) for line in lines]
        types = [e["type"] for e in entries]
        assert types[0] == "triggered" and types[-1] == "completed"
        assert [e["payload"] for e in entries if e["type"] == "progress"] == [
            {"done": 1, "of": 3},
            {"done": 2, "of": 3},
            {"done": 3, "of": 3},
            "finished",
        ]
        assert entries[-1]["payload"] == {"total": 3, "go": {"ok": True}, "name": "f"}
        assert [e["sequence"] for e in entries] == list(range(1, len(entries) + 1))
    else:
        assert lines[0].split() == ["SEQ", "TIME", "TYPE", "KEY", "DETAIL"]
        assert "completed" in lines[-1] and '"total":3' in lines[-1]
        assert sum(" progress " in line for line in lines) == 4
    # The same entries as the history printed afterwards.
    history = json.loads(ok(stepd(server, "runs", "history", run_id, "--json")))
    assert len(history) == len(lines) - (0 if as_json else 1)


def test_follow_a_failed_run_exits_3_and_start_wait_says_why(stack: Stack, server: Server) -> None:
    stack.start_worker(server, OPS)
    done = stepd(server, "runs", "start", "ops.fail", "--input", "7", "--run-id", "bad-1", "--wait")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.strip() == "run bad-1 failed: builtins.ValueError: bad input: 7"
    followed = stepd(server, "runs", "history", "bad-1", "--follow")
    assert followed.returncode == 3 and followed.stdout.splitlines()[-1].split()[2] == "failed"
    shown = json.loads(ok(stepd(server, "runs", "show", "bad-1", "--json")))
    assert shown["run"]["status"] == "failed"
    assert shown["run"]["error"]["type"] == "builtins.ValueError"


# -- JSON and errors -------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_runs_commands_print_json_for_scripts(stack: Stack, server: Server) -> None:
    stack.start_worker(server, OPS)
    started = json.loads(
        ok(stepd(server, "runs", "start", "ops.echo", "--input", '{"a": [1, 2]}', "--json"))
    )
    run_id = started["run"]["run_id"]
    assert started["already_existed"] is False
    assert started["run"]["input"] == {"a": [1, 2]}
    waited = stepd(server, "runs", "start", "ops.echo", "--input", '{"b": 2}', "--wait", "--json")
    ended = json.loads(ok(waited))
    assert ended["run"]["status"] == "completed" and ended["run"]["result"] == {"b": 2}
    listed = json.loads(ok(stepd(server, "runs", "list", "--workflow", "ops.echo", "--json")))
    assert [r["run_id"] for r in listed][1:] == [run_id]
    assert "input" not in listed[0]  # listings leave payloads out
    parent = ok(stepd(server, "runs", "start", "ops.waits", "--input", '{"order": 1}')).strip()
    waits: list[dict[str, object]] = []
    deadline = time.monotonic() + TIMEOUT
    while len(waits) < 5:
        assert time.monotonic() < deadline, "the run never suspended"
        shown = json.loads(ok(stepd(server, "runs", "show", parent, "--json")))
        waits = shown.get("pending_waits", [])
    assert {w["kind"] for w in waits} == {"timer", "signal", "event", "hook", "child"}
    assert [c["parent_run_id"] for c in shown["children"]] == [parent]
    child_id = shown["children"][0]["run_id"]
    human = ok(stepd(server, "runs", "show", parent))
    assert "status:   suspended" in human and f"child run {child_id}" in human
    assert "token h1." in human and "signal 'approve'" in human
    signalled = json.loads(
        ok(stepd(server, "runs", "signal", parent, "approve", "--data", '"yes"', "--json"))
    )
    assert signalled == {"run_id": parent, "name": "approve"}
    cancelled = json.loads(ok(stepd(server, "runs", "cancel", child_id, "--json")))
    assert cancelled["run"]["status"] in ("cancelled", "completed")


def test_events_hooks_and_schedules_print_json(stack: Stack, server: Server) -> None:
    published = json.loads(
        ok(stepd(server, "events", "publish", "nobody.waits", "--data", '{"x": 1}', "--json"))
    )
    assert published["event_id"] and "woken_run_ids" not in published
    again = json.loads(
        ok(
            stepd(
                server,
                "events",
                "publish",
                "nobody.waits",
                "--id",
                published["event_id"],
                "--json",
            )
        )
    )
    assert again["already_published"] is True
    created = json.loads(
        ok(
            stepd(
                server,
                "schedules",
                "create",
                "--id",
                "nightly",
                "--workflow",
                "ops.echo",
                "--cron",
                "0 3 * * *",
                "--overlap",
                "allow",
                "--paused",
                "--json",
            )
        )
    )
    assert created["schedule_id"] == "nightly" and created["paused"] is True
    assert created["spec"]["overlap_policy"] == "allow"
    listed = json.loads(ok(stepd(server, "schedules", "list", "--json")))
    assert [s["schedule_id"] for s in listed] == ["nightly"]
    triggered = json.loads(ok(stepd(server, "schedules", "trigger", "nightly", "--json")))
    assert triggered["run"]["schedule_id"] == "nightly"
    deleted = json.loads(ok(stepd(server, "schedules", "delete", "nightly", "--json")))
    assert deleted == {"schedule_id": "nightly"}
    missing = stepd(server, "schedules", "show", "nightly")
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"stepd: {server.address}: NOT_FOUND: ")
    assert len(missing.stderr.splitlines()) == 1
    forged = stepd(server, "hooks", "execute", "h1.bad.token.x", "--data", "{}")
    assert forged.returncode == 1 and len(forged.stderr.splitlines()) == 1
    assert ": NOT_FOUND: " in forged.stderr or ": INVALID_ARGUMENT: " in forged.stderr


def test_errors_are_one_line_with_documented_exit_codes(tmp_path: Path) -> None:
    unreachable = stepd(None, "runs", "list", "--address", "127.0.0.1:1", timeout=90)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("stepd: 127.0.0.1:1: UNAVAILABLE: ")
    assert len(unreachable.stderr.splitlines()) == 1
    usage = stepd(None, "runs", "signal", "r", "n", "--data", "{nope", "--address", "127.0.0.1:1")
    assert usage.returncode == 2 and usage.stderr.startswith("stepd: --data is not JSON: ")
    unknown = stepd(None, "runs", "frobnicate")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    missing_ca = stepd(None, "runs", "list", "--tls-ca", str(tmp_path / "none.pem"))
    assert missing_ca.returncode == 2 and "cannot read the CA bundle" in missing_ca.stderr
    for done in (unreachable, usage, unknown, missing_ca):
        assert "Traceback" not in done.stderr


def test_the_commands_import_no_database_code() -> None:
    code = (
        "import sys\n"
        "import stepd.server.ops_cli, stepd.server.ops_cli.runs, stepd.server.ops_cli.schedules\n"
        "import stepd.server.ops_cli.events, stepd.server.ops_cli.hooks\n"
        "import stepd.server.ops_cli.run_actions, stepd.server.ops_cli.bulk\n"
        "import stepd.server.ops_cli.workers\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'asyncpg'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# -- keys and TLS ---------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


@pytest.mark.timeout(300)
def test_the_commands_use_tls_and_api_keys_under_their_roles(
    stack: Stack, database: str, certs: Certificates, tmp_path: Path
) -> None:
    admin = admin_key(database)
    server = start_secure_server(stack, database, certs, tmp_path)
    reader = create_key(server, certs, admin, "reader")
    client = create_key(server, certs, admin, "client")
    connect = ["--address", server.address, *tls_args(certs, mutual=False)]
    worker = create_key(server, certs, admin, "worker", "--workflow", "ops.*")
    stack.start_worker(server, OPS, args=[*tls_args(certs, mutual=False), "--api-key", worker])
    as_client = {"STEPD_API_KEY": client}
    started = stepd(
        None, "runs", "start", "ops.waits", "--input", '{"order": 1}', *connect, env=as_client
    )
    run_id = ok(started).strip()
    listed = json.loads(ok(stepd(None, "runs", "list", "--json", *connect, "--api-key", reader)))
    assert run_id in [r["run_id"] for r in listed]
    # A hook's token is shown to a key that may execute hooks, not to a reader.
    deadline = time.monotonic() + TIMEOUT
    while "waiting for" not in (
        shown := ok(stepd(None, "runs", "show", run_id, *connect, env=as_client))
    ):
        assert time.monotonic() < deadline, shown
    assert "token h1." in shown
    hidden = ok(stepd(None, "runs", "show", run_id, *connect, "--api-key", reader))
    assert "hook (token hidden)" in hidden and "h1." not in hidden
    denied = stepd(None, "runs", "cancel", run_id, *connect, "--api-key", reader)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr and "lacks the right 'cancel'" in denied.stderr
    stranger = stepd(None, "runs", "list", *connect)
    assert stranger.returncode == 1 and "UNAUTHENTICATED" in stranger.stderr
    plain = stepd(None, "runs", "list", "--address", server.address, "--api-key", reader)
    assert plain.returncode == 1 and len(plain.stderr.splitlines()) == 1
