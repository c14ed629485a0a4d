"""Lay out ``build/typecheck/stepd`` for mypy: the import root over the folders.

The repository keeps its folders (``worker_sdk/``, ``service/``,
``clients/python/stepd/v1/``) while the installed package is one import root,
``stepd``, mapped in pyproject.toml. Runtime imports from the checkout go
through the editable install; mypy cannot follow its import hook, so this
script builds a tree of symbolic links with the installed shape (the SDK's
files at the top, ``server`` and ``v1`` as links to their folders) and
pyproject.toml points mypy's search path at it. Folders are linked whole, so
a new module under ``service/`` needs no re-run; ``scripts/check`` re-runs it
anyway.

Usage: ``python scripts/type_tree.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck" / "stepd"
FOLDERS = {"server": ROOT / "service", "v1": ROOT / "clients" / "python" / "stepd" / "v1"}
SDK = ROOT / "worker_sdk"


def main() -> int:
    shutil.rmtree(TREE, ignore_errors=True)
    TREE.mkdir(parents=True)
    for entry in sorted(SDK.iterdir()):
        if entry.name != "__pycache__":
            (TREE / entry.name).symlink_to(entry)
    for name, folder in FOLDERS.items():
        (TREE / name).symlink_to(folder, target_is_directory=True)
    print(f"linked {TREE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
