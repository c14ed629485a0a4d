"""The TypeScript client (clients/typescript) against a real server and Python worker.

Compiles the client and runs its tests with Node's test runner
(``node --test``), pointed at this test's server. Needs Node.js 20+ and the
client's packages (``npm ci`` in clients/typescript, which .ci/run does);
without them the test is skipped, except under CI where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.e2e.harness import ROOT, ManagedProcess, Server

TYPESCRIPT = ROOT / "clients" / "typescript"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (TYPESCRIPT / "node_modules" / ".bin" / "tsc").exists():
        return "run `npm ci` in clients/typescript"
    return None


def test_the_typescript_client_starts_signals_traces_and_reads_a_run(
    server: Server, worker: ManagedProcess, tmp_path: os.PathLike[str]
) -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the TypeScript client test cannot run under CI: {missing}")
        pytest.skip(missing)
    out = f"{tmp_path}/dist"
    build = subprocess.run(
        [str(TYPESCRIPT / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json", "--outDir", out],
        cwd=TYPESCRIPT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    # dist/ is outside the package: let Node resolve the packages from it.
    os.symlink(TYPESCRIPT / "node_modules", f"{tmp_path}/node_modules")
    # package.json says "type": "module": the compiled files are ES modules.
    shutil.copyfile(TYPESCRIPT / "package.json", f"{tmp_path}/package.json")
    run = subprocess.run(
        ["node", "--test", "--test-reporter=tap", f"{out}/test/"],
        cwd=tmp_path,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "# pass 5" in report and "# fail 0" in report and "# skipped 0" in report, report
