"""The ``stepd serve`` command as scripts see it: env settings, stdout, signals."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, SERVER_READY, console_script


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
        rest, _ = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate(timeout=10)
    assert server.returncode == 0
    assert rest == "", "the ready line is the only line on stdout"
