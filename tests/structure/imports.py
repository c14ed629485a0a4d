"""The import graph of the project's packages, read from the source (no imports run).

Module names are the installed ones (``stepd``, ``stepd.server.engine.engine``)
and files are found through the folders pyproject.toml maps them to.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Import name -> folder, as pyproject.toml's [tool.setuptools] package-dir says.
FOLDERS = {
    "stepd": ROOT / "worker_sdk",
    "stepd.server": ROOT / "service",
    "stepd.v1": ROOT / "clients" / "python" / "stepd" / "v1",
}


@dataclass(frozen=True)
class Module:
    """One source file and the project modules it imports (anywhere in it)."""

    name: str
    path: Path
    imports: frozenset[str]


def module_files(package: str) -> Iterator[tuple[str, Path]]:
    """Yield (module name, path) for every .py file of one mapped folder."""
    folder = FOLDERS[package]
    for path in sorted(folder.rglob("*.py")):
        relative = path.relative_to(folder).with_suffix("")
        parts = [p for p in relative.parts if p != "__init__"]
        if package == "stepd" and parts and parts[0] in ("server", "v1"):
            continue
        yield ".".join([package, *parts]), path


def all_modules() -> dict[str, Module]:
    """Every module of the SDK and the server, with its project imports."""
    names: dict[str, Path] = {}
    for package in ("stepd", "stepd.server"):
        names.update(module_files(package))
    known = set(names) | {name for name, _ in module_files("stepd.v1")}
    modules: dict[str, Module] = {}
    for name, path in names.items():
        is_package = path.name == "__init__.py"
        found = set(_imports(ast.parse(path.read_text()), name, is_package, known))
        found.discard(name)
        modules[name] = Module(name, path, frozenset(found))
    return modules


def _imports(tree: ast.Module, name: str, is_package: bool, known: set[str]) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield from _resolve(candidate if candidate in known else base, known)


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def _resolve(module: str, known: set[str]) -> Iterator[str]:
    """The project module an import names (its nearest known ancestor)."""
    parts = module.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            yield candidate
            return
        parts.pop()


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(modules[node].imports):
            if target not in modules:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found
