"""The ``stepd serve`` command as scripts see it: env settings, stdout, signals."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, SERVER_READY, console_script, rest_of_output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_takes_env_settings_prints_one_line_and_stops_on_signal(
    tmp_path: Path, signum: int
) -> None:
    database = tmp_path / "from-env.db"
    env = os.environ | {"STEPD_ADDRESS": "127.0.0.1:0", "STEPD_DATABASE": str(database)}
    server = subprocess.Popen(
        [*console_script("stepd", "stepd.server.cli"), "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline().rstrip("\n")  # flushed at once, or this blocks
        ready = SERVER_READY.match(first)
        assert ready, first
        assert ready[1] == "127.0.0.1" and int(ready[2]) > 0
        assert Path(ready[3]).resolve() == database.resolve()
        assert database.exists()

        server.send_signal(signum)
        rest, _ = rest_of_output(server, timeout=15)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate(timeout=10)
    assert server.returncode == 0
    # After the ready line only the HTTP listener's URL (printed right after it).
    extra = [line for line in rest.splitlines() if not line.startswith("stepd http on http://")]
    assert extra == [], "the ready and HTTP lines are the only lines on stdout"


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*console_script("stepd", "stepd.server.cli"), "serve", *args],
        cwd=ROOT,
        env=os.environ | (env or {}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=ROOT,
        env=os.environ | (env or {}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_one_server_per_database_file_and_per_port(tmp_path: Path) -> None:
    database = tmp_path / "one.db"
    first = _serve("--address", "127.0.0.1:0", "--database", str(database))
    try:
        assert first.stdout is not None
        ready = SERVER_READY.match(first.stdout.readline().rstrip("\n"))
        assert ready, "the first server did not start"
        address = f"127.0.0.1:{ready[2]}"
        stepd = console_script("stepd", "stepd.server.cli")

        same_file = _run(*stepd, "serve", "--address", "127.0.0.1:0", "--database", str(database))
        assert same_file.returncode == 1
        assert f"the database {database} is in use by another stepd server (pid {first.pid})" in (
            same_file.stderr
        )
        assert "Traceback" not in same_file.stderr

        other = tmp_path / "other.db"
        same_port = _run(*stepd, "serve", "--address", address, "--database", str(other))
        assert same_port.returncode == 1
        assert f"stepd: cannot listen on {address}: the address is in use" in same_port.stderr
        assert "Traceback" not in same_port.stderr

        health = _run(*stepd, "health", "--address", address)
        assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=15)
    # The lock goes with the server: the file can be served again at once.
    again = _serve("--address", "127.0.0.1:0", "--database", str(database))
    try:
        assert again.stdout is not None
        assert SERVER_READY.match(again.stdout.readline().rstrip("\n"))
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=15)
    down = _run(*stepd, "health", "--address", address, "--timeout", "1")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--lease-timeout", "-1"], {}, "--lease-timeout='-1' must be a positive number"),
        ([], {"STEPD_LEASE_TIMEOUT": "abc"}, "STEPD_LEASE_TIMEOUT='abc' is not a number"),
        ([], {"STEPD_DB_POOL_SIZE": "x"}, "STEPD_DB_POOL_SIZE='x' is not a whole number"),
        (["--log-level", "loud"], {}, "--log-level='loud' must be one of DEBUG"),
        (["--timer-lead", "6"], {}, "--timer-lead='6' must be from 0 to 5 seconds"),
        ([], {"STEPD_TIMER_LEAD": "nan"}, "STEPD_TIMER_LEAD='nan' must be from 0 to 5 seconds"),
        (["--db", "3"], {}, "unrecognized arguments: --db 3"),
        (
            ["--database", "postgresql://u@h/db?sslmode=maybe"],
            {},
            "sslmode='maybe' in the PostgreSQL URL",
        ),
    ],
)
def test_bad_settings_are_usage_errors_naming_their_source(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    stepd = console_script("stepd", "stepd.server.cli")
    out = _run(*stepd, "serve", "--address", "127.0.0.1:0", *argv, env=env)
    assert out.returncode in (1, 2)
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    # --help works whatever the environment holds.
    helped = _run(*stepd, "serve", "--help", env=env)
    assert helped.returncode == 0 and "STEPD_LEASE_TIMEOUT" in helped.stdout


def test_the_worker_command_explains_a_missing_module() -> None:
    worker = console_script("stepd-worker", "stepd.cli")
    for target, message in [
        ("no_such_module_here", "no module named 'no_such_module_here'"),
        ("missing/file.py", "no such file: missing/file.py"),
    ]:
        out = _run(*worker, target)
        assert out.returncode == 2
        assert message in out.stderr and "Traceback" not in out.stderr
    bad_env = _run(*worker, "--help", env={"STEPD_WORKER_CONCURRENCY": "x"})
    assert bad_env.returncode == 0
    assert _run(*worker, "--version").stdout.strip().startswith("stepd-worker ")
