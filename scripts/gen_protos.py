"""Regenerate the Python code in clients/python from proto/.

The proto path equals the Python import path (``stepd/v1/x.proto`` becomes
``stepd.v1.x_pb2``), so generated imports need no rewriting. The package
``stepd.v1`` is this folder (``clients/python/stepd/v1``, mapped in
pyproject.toml); the ``.proto`` files are copied beside the generated code so
that the wheel carries the contract (``protoc -I site-packages
stepd/v1/workflow_service.proto`` works on an installed package).

The generator is pinned (grpcio-tools 1.76.0, protobuf 6.31 gencode): the
generated code then runs on protobuf 6.31+ and 7, and grpcio 1.76+, which are
the floors in pyproject.toml.

Usage: ``python scripts/gen_protos.py [--check]``. With ``--check`` nothing is
written; the exit code is 1 when the committed code differs from what
``proto/`` generates.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "clients" / "python"
PACKAGE = "stepd/v1"


def generate(out_root: Path) -> None:
    """Run protoc (from grpcio-tools) over every .proto file into out_root."""
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    scripts_dir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside python
    out_root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={scripts_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)
    package = out_root / PACKAGE
    (package / "__init__.py").write_text(
        '"""Generated from proto/ by scripts/gen_protos.py. Do not edit."""\n'
    )
    (package / "py.typed").write_text("")
    for proto in protos:
        shutil.copyfile(PROTO_ROOT / proto, out_root / proto)


def differences(left: Path, right: Path) -> list[str]:
    """Return the relative paths that differ between two generated trees."""
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
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if clients/ is out of date")
    args = parser.parse_args()
    target = OUT_ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        generate(fresh)
        if args.check:
            stale = differences(fresh / PACKAGE, target) if target.exists() else [PACKAGE]
            stale = [p for p in stale if "__pycache__" not in p]
            if stale:
                print("clients/python is out of date with proto/; run scripts/gen_protos.py:")
                for path in stale:
                    print(f"  {path}")
                return 1
            print("clients/python is up to date with proto/")
            return 0
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(fresh / PACKAGE, target)
    print(f"generated {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
