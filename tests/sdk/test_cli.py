"""The stepd-worker command: module loading, options, the ready line, clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker_sdk import cli

from .fake_server import FakeWorkerService, start_server

MODULE = textwrap.dedent(
    """
    from worker_sdk import WorkflowContext, step, workflow

    @step
    async def hello(name: str) -> str:
        return f"hello {name}"

    @workflow
    async def greet(ctx: WorkflowContext, name: str) -> str:
        return await hello(name)

    @workflow(name="greet", version=2)
    async def greet_v2(ctx: WorkflowContext, name: str) -> str:
        return await hello(name)

    alias = greet  # the same workflow twice is served once
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "cli_flows.py").write_text(MODULE)
    (tmp_path / "empty_mod.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("cli_flows", "empty_mod"):
        sys.modules.pop(name, None)


def test_collects_workflows_from_modules(project: Path) -> None:
    sys.path.insert(0, str(project))
    found = cli._workflows_in(cli._import("cli_flows"))
    assert {(w.name, w.version) for w in found} == {("greet", "1"), ("greet", "2")}
    assert len(found) == 3  # alias included; main() serves each object once
    by_path = cli._workflows_in(cli._import(str(project / "cli_flows.py")))
    assert len(by_path) == 3


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPD_SERVER", "10.0.0.1:7000")
    monkeypatch.setenv("STEPD_WORKER_CONCURRENCY", "7")
    args = cli._parser().parse_args(["m"])
    assert (args.server, args.concurrency) == ("10.0.0.1:7000", 7)
    args = cli._parser().parse_args(["m", "--server", "h:1", "--concurrency", "3"])
    assert (args.server, args.concurrency) == ("h:1", 3)


def test_bad_options_and_empty_modules(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as bad:
        cli.main(["cli_flows", "--concurrency", "0"])
    assert bad.value.code == 2
    with pytest.raises(SystemExit) as empty:
        cli.main(["empty_mod"])
    assert empty.value.code == 2
    assert "no @workflow found in empty_mod" in capsys.readouterr().err


async def test_prints_ready_and_exits_cleanly_on_sigterm(project: Path) -> None:
    fake = FakeWorkerService()
    server, address = await start_server(fake)
    env = {**os.environ, "STEPD_SERVER": address, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from worker_sdk.cli import main; sys.exit(main())",
        "cli_flows",
        "--concurrency",
        "5",
        cwd=project,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.decode() == f"stepd worker ready (2 workflows, server {address})\n"
        stream = await fake.wait_streams(1)
        assert stream.hello.capacity == 5
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        await asyncio.wait_for(stream.ended.wait(), 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(None)
