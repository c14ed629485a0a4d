"""The layering the project keeps: who may import whom, read from the source."""

from __future__ import annotations

import tomllib

from tests.structure.imports import FOLDERS, ROOT, all_modules, cycles, module_files

#: The one SDK module that may import the server: the test environment, which runs
#: one in the test's process. stepd.testing loads it only when WorkflowEnvironment
#: is used, so that neither `import stepd` nor the replayer loads the server.
TEST_ENVIRONMENT = "stepd.testing._environment"


def _is_sdk(name: str) -> bool:
    return name.startswith("stepd") and not name.startswith(("stepd.server", "stepd.v1"))


def test_the_sdk_never_imports_the_server_but_for_the_test_environment() -> None:
    for module in all_modules().values():
        if _is_sdk(module.name) and module.name != TEST_ENVIRONMENT:
            bad = [m for m in module.imports if m.startswith("stepd.server")]
            assert not bad, f"{module.path} imports {bad}"
    assert any(m.startswith("stepd.server") for m in all_modules()[TEST_ENVIRONMENT].imports)


def test_the_server_is_loaded_only_when_the_test_environment_is_used() -> None:
    import subprocess
    import sys

    script = (
        "import sys, stepd, stepd.testing\n"
        "from stepd.testing import RunHistory, replay\n"
        "assert not [m for m in sys.modules if m.startswith('stepd.server')], 'loaded early'\n"
        "from stepd.testing import WorkflowEnvironment\n"
        "assert 'stepd.server.server' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_starting_the_server_loads_neither_the_sdk_nor_pydantic() -> None:
    import subprocess
    import sys

    script = (
        "import sys, stepd.server.cli, stepd.server.server\n"
        "sdk = [m for m in sys.modules if m.startswith('stepd._') or m.startswith('pydantic')]\n"
        "assert not sdk, sdk\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_server_never_imports_the_sdk() -> None:
    for module in all_modules().values():
        if module.name.startswith("stepd.server"):
            bad = [m for m in module.imports if _is_sdk(m)]
            assert not bad, f"{module.path} imports {bad}"


def test_the_sdk_has_no_import_cycles() -> None:
    found = [group for group in cycles(all_modules()) if any(_is_sdk(m) for m in group)]
    assert found == [], f"modules of the SDK that import each other: {found}"


def test_store_never_imports_engine_or_api_and_engine_never_imports_api() -> None:
    above = {
        "stepd.server.store": ("stepd.server.engine", "stepd.server.api", "stepd.server.server"),
        "stepd.server.engine": ("stepd.server.api", "stepd.server.server"),
    }
    for module in all_modules().values():
        for layer, forbidden in above.items():
            if module.name.startswith(layer):
                bad = [m for m in module.imports if m.startswith(forbidden)]
                assert not bad, f"{module.path} imports {bad}"


def test_no_server_modules_import_each_other_in_a_circle() -> None:
    # Helpers of the engine receive their collaborators instead of importing it.
    found = [group for group in cycles(all_modules()) if group[0].startswith("stepd.server")]
    assert found == []


def test_the_sdk_loads_no_database_library() -> None:
    import ast

    for name, path in module_files("stepd"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not any(n.split(".")[0] in ("sqlalchemy", "asyncpg") for n in names), name


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {k: str(ROOT / v) for k, v in config["package-dir"].items()}
    assert mapped == {k: str(v) for k, v in FOLDERS.items()}
    packages = {
        name
        for package in FOLDERS
        for name, path in module_files(package)
        if path.name == "__init__.py"
    }
    assert sorted(config["packages"]) == sorted(packages)
