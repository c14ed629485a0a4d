"""Test your workflows: ``stepd.testing`` (see docs/testing.md).

- ``WorkflowEnvironment``: a stepd server and a worker in this process, on a
  temporary database, whose clock skips ahead while the test waits, with
  helpers to mock steps and workflows, send signals and events, execute hooks
  and read a run's history. It needs the server (``pip install 'stepd[server]'``).
- ``replay`` / ``ReplayResult``: run a recorded history against the current
  code of its workflow and report non-determinism; no server needed.
- ``RunHistory``: a run's history exported from a server, kept as a JSON file.

The pytest plugin (``stepd.testing.pytest_plugin``, loaded by pytest when
stepd is installed) adds the fixtures ``stepd_env`` and ``stepd_workflows``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepd.testing._history import RunHistory
from stepd.testing._replayer import ReplayResult, replay

if TYPE_CHECKING:
    from stepd.testing._environment import WorkflowEnvironment

__all__ = ["ReplayResult", "RunHistory", "WorkflowEnvironment", "replay"]


def __getattr__(name: str) -> Any:
    # The environment imports the server: loaded on first use only.
    if name == "WorkflowEnvironment":
        try:
            from stepd.testing._environment import WorkflowEnvironment
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"stepd.testing.WorkflowEnvironment runs a stepd server, which needs "
                f"{exc.name!r}: pip install 'stepd[server]'"
            ) from exc
        return WorkflowEnvironment
    raise AttributeError(f"module 'stepd.testing' has no attribute {name!r}")
