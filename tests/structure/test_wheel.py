"""The wheel a user installs: one import root, the contract inside, a light SDK.

Builds the wheel from this checkout and installs it (not editable) into a
fresh virtualenv, then looks at it the way a new user would.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.structure.imports import ROOT

# Building, installing and resolving talk to the package index: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SDK_IMPORT_CHECK = """
import sys
from stepd import Client, Worker, step, workflow
from stepd.testing import RunHistory, replay  # the replayer needs no server
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "asyncpg")
               or m.startswith("stepd.server"))
assert not heavy, heavy
try:
    from stepd.testing import WorkflowEnvironment
except ModuleNotFoundError as exc:
    assert "pip install 'stepd[server]'" in str(exc), exc
else:
    raise AssertionError("WorkflowEnvironment imported without the server's libraries")
print("ok")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Test workers build one at a time: builds of one checkout share its build/ directory.
    (ROOT / "build").mkdir(exist_ok=True)
    with (ROOT / "build" / "wheel.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
            check=True,
            timeout=300,
        )
    (built,) = out.glob("stepd-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the wheel's base install (no server extra)."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=True)
    subprocess.run(
        [str(env / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True,
        timeout=600,
    )
    yield env


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_only_top_level_package_is_stepd(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in _names(wheel)}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"stepd"}


def test_the_contract_and_type_markers_are_inside(wheel: Path) -> None:
    names = set(_names(wheel))
    protos = sorted(p.name for p in (ROOT / "proto" / "stepd" / "v1").glob("*.proto"))
    assert protos
    for proto in protos:
        assert f"stepd/v1/{proto}" in names
    for marker in ("stepd/py.typed", "stepd/server/py.typed", "stepd/v1/py.typed"):
        assert marker in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_web_ui_ships_in_the_wheel(wheel: Path) -> None:
    names = set(_names(wheel))
    assets = sorted(p.name for p in (ROOT / "service" / "http" / "ui").iterdir())
    assert {"index.html", "app.js", "app.css"} <= set(assets)
    for asset in assets:
        assert f"stepd/server/http/ui/{asset}" in names


def test_the_sdk_imports_without_the_server(installed: Path) -> None:
    python = installed / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", SDK_IMPORT_CHECK], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    listed = subprocess.run(
        [str(installed / "bin" / "pip"), "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "sqlalchemy" not in listed and "asyncpg" not in listed


def test_version_flags_and_the_server_hint(installed: Path) -> None:
    for command in ("stepd", "stepd-worker"):
        out = subprocess.run(
            [str(installed / "bin" / command), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{command} 0.1.0"
    serve = subprocess.run(
        [str(installed / "bin" / "stepd"), "serve", "--address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 1
    assert "pip install 'stepd[server]'" in serve.stderr
    assert "Traceback" not in serve.stderr


def test_it_resolves_beside_temporalio_and_hatchet(wheel: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "--report",
            str(tmp_path / "report.json"),
            f"{wheel}[server]",
            "temporalio",
            "hatchet-sdk",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
