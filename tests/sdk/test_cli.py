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

from stepd import cli

from .conftest import make_task
from .fake_server import FakeWorkerService, start_server

MODULE = textwrap.dedent(
    """
    from stepd import WorkflowContext, step, workflow

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

STUCK = textwrap.dedent(
    """
    import os
    import pathlib
    import time

    from stepd import WorkflowContext, step, workflow

    @step
    def stuck_in_thread() -> None:
        pathlib.Path(os.environ["STEP_MARK"]).touch()
        time.sleep(60)  # a sync step that cannot be interrupted

    @workflow
    async def stuck(ctx: WorkflowContext) -> None:
        await stuck_in_thread()
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "cli_flows.py").write_text(MODULE)
    (tmp_path / "empty_mod.py").write_text("X = 1\n")
    (tmp_path / "stuck_flows.py").write_text(STUCK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("cli_flows", "empty_mod", "stuck_flows"):
        sys.modules.pop(name, None)


def test_collects_workflows_from_modules(project: Path) -> None:
    sys.path.insert(0, str(project))
    found = cli._workflows_in(cli._import("cli_flows"))
    assert {(w.name, w.version) for w in found} == {("greet", "1"), ("greet", "2")}
    assert len(found) == 3  # alias included; main() serves each object once
    by_path = cli._workflows_in(cli._import(str(project / "cli_flows.py")))
    assert len(by_path) == 3


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPD_WORKER_SHUTDOWN_GRACE", raising=False)
    assert cli._parser().parse_args(["m"]).shutdown_grace == 30.0
    monkeypatch.setenv("STEPD_SERVER", "10.0.0.1:7000")
    monkeypatch.setenv("STEPD_WORKER_CONCURRENCY", "7")
    monkeypatch.setenv("STEPD_WORKER_SHUTDOWN_GRACE", "2.5")
    args = cli._parser().parse_args(["m"])
    assert (args.server, args.concurrency, args.shutdown_grace) == ("10.0.0.1:7000", 7, 2.5)
    argv = ["m", "--server", "h:1", "--concurrency", "3", "--shutdown-grace", "0"]
    args = cli._parser().parse_args(argv)
    assert (args.server, args.concurrency, args.shutdown_grace) == ("h:1", 3, 0.0)


def test_bad_options_and_empty_modules(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as bad:
        cli.main(["cli_flows", "--concurrency", "0"])
    assert bad.value.code == 2
    for grace in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit) as bad_grace:
            cli.main(["cli_flows", "--shutdown-grace", grace])
        assert bad_grace.value.code == 2
    assert "--shutdown-grace: must be a number of seconds >= 0" in capsys.readouterr().err
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
        "import sys; from stepd.cli import main; sys.exit(main())",
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


async def start_worker(project: Path, address: str, *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "STEPD_SERVER": address,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "STEP_MARK": str(project / "step-started"),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from stepd.cli import main; sys.exit(main())",
        *args,
        cwd=project,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_for_file(path: Path, within: float = 20) -> None:
    async with asyncio.timeout(within):
        while not path.exists():  # noqa: ASYNC110, ASYNC240 - polling the file system
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("second_signal", [False, True], ids=["grace-expires", "second-sigterm"])
async def test_sigterm_drains_then_releases_a_stuck_run_and_exits_0(
    project: Path, second_signal: bool
) -> None:
    fake = FakeWorkerService()
    server, address = await start_server(fake)
    grace = "60" if second_signal else "0.5"
    process = await start_worker(project, address, "stuck_flows", "--shutdown-grace", grace)
    try:
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.startswith(b"stepd worker ready")
        stream = await fake.wait_streams(1)
        stream.push(tasks=[make_task("stuck", run_id="s1", lease_id=4)])
        await wait_for_file(project / "step-started")
        loop = asyncio.get_running_loop()
        started = loop.time()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while not stream.drains():  # noqa: ASYNC110 - polling what the fake server saw
                await asyncio.sleep(0.01)
        assert stream.drains()[0].reason == "SIGTERM"
        if second_signal:
            await asyncio.sleep(0.3)
            assert process.returncode is None  # still in its (60 s) grace
            process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert loop.time() - started < 10  # not the thread's 60 s, nor the 60 s grace
        assert [c.WhichOneof("command") for c in stream.commands()] == ["release_run"]
        assert stream.commands()[0].release_run.reason == "worker shutting down"
        err = (await process.stderr.read()).decode()
        assert "sync step(s) still running in threads" in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(None)
