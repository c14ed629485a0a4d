"""Regenerate the clients in clients/ from proto/: Python, then TypeScript.

The proto path equals the Python import path (``stepd/v1/x.proto`` becomes
``stepd.v1.x_pb2``), so generated imports need no rewriting. The package
``stepd.v1`` is this folder (``clients/python/stepd/v1``, mapped in
pyproject.toml); the ``.proto`` files are copied beside the generated code so
that the wheel carries the contract (``protoc -I site-packages
stepd/v1/workflow_service.proto`` works on an installed package).

The generator is pinned (grpcio-tools 1.76.0, protobuf 6.31 gencode): the
generated code then runs on protobuf 6.31+ and 7, and grpcio 1.76+, which are
the floors in pyproject.toml.

TypeScript (``clients/typescript/src/gen``) comes from ``protoc-gen-es``, the
version pinned in ``clients/typescript/package-lock.json`` (``npm ci`` in that
folder installs it), run by the same protoc. Without it the TypeScript part is
skipped with a note, except under CI (``CI`` set), where that is an error.

Usage: ``python scripts/gen_protos.py [--check]``. With ``--check`` nothing is
written; the exit code is 1 when the committed code differs from what
``proto/`` generates.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "stepd/v1"
PYTHON_OUT = ROOT / "clients" / "python" / PACKAGE
TYPESCRIPT = ROOT / "clients" / "typescript"
TYPESCRIPT_OUT = TYPESCRIPT / "src" / "gen"
ES_PLUGIN = TYPESCRIPT / "node_modules" / ".bin" / "protoc-gen-es"


def _protos() -> list[str]:
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def _protoc(*arguments: str) -> None:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        *arguments,
        *_protos(),
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)


def generate_python(out_root: Path) -> Path:
    """Python, gRPC and type stubs, plus a copy of the .proto files; returns the package."""
    scripts_dir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside python
    out_root.mkdir(parents=True, exist_ok=True)
    _protoc(
        f"--plugin=protoc-gen-mypy={scripts_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
    )
    package = out_root / PACKAGE
    (package / "__init__.py").write_text(
        '"""Generated from proto/ by scripts/gen_protos.py. Do not edit."""\n'
    )
    (package / "py.typed").write_text("")
    for proto in _protos():
        shutil.copyfile(PROTO_ROOT / proto, out_root / proto)
    return package


def generate_typescript(out_root: Path) -> Path:
    """protobuf-es messages and service descriptors (TypeScript); returns the folder."""
    out_root.mkdir(parents=True, exist_ok=True)
    _protoc(
        f"--plugin=protoc-gen-es={ES_PLUGIN}",
        f"--es_out={out_root}",
        "--es_opt=target=ts,import_extension=js",
    )
    return out_root


def differences(left: Path, right: Path) -> list[str]:
    """Return the relative paths that differ between two generated trees."""
    if not right.exists():
        return ["(missing)"]
    found: list[str] = []
    compare = filecmp.dircmp(left, right)
    stack = [(compare, Path())]
    while stack:
        node, prefix = stack.pop()
        for name in node.left_only + node.right_only + node.diff_files + node.funny_files:
            found.append(str(prefix / name))
        for name, sub in node.subdirs.items():
            if name != "__pycache__":
                stack.append((sub, prefix / name))
    return sorted(p for p in found if "__pycache__" not in p)


def _sync(name: str, fresh: Path, target: Path, check: bool) -> bool:
    """Compare (``check``) or replace ``target`` with ``fresh``; False when stale."""
    where = target.relative_to(ROOT)
    if check:
        stale = differences(fresh, target)
        if stale:
            print(f"{where} is out of date with proto/; run scripts/gen_protos.py:")
            for path in stale:
                print(f"  {path}")
            return False
        print(f"{where} ({name}) is up to date with proto/")
        return True
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(fresh, target)
    print(f"generated {where} ({name})")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if clients/ is out of date")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        ok &= _sync("Python", generate_python(fresh / "python"), PYTHON_OUT, args.check)
        if ES_PLUGIN.exists():
            generated = generate_typescript(fresh / "typescript")
            ok &= _sync("TypeScript", generated, TYPESCRIPT_OUT, args.check)
        elif os.environ.get("CI"):
            print("protoc-gen-es is missing: run `npm ci` in clients/typescript")
            ok = False
        else:
            print("skipped TypeScript: run `npm ci` in clients/typescript to include it")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
