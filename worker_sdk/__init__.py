"""stepd worker SDK: durable workflows as ordinary async Python.

Define workflows with ``@workflow`` and steps with ``@step`` (they make ``Workflow``
and ``Step`` objects), serve them with ``Worker``, and start and inspect runs with
``Client`` (``RunHandle``, ``RunInfo``, ``RunStatus``, ``PublishedEvent``).
Workflow code gets a ``WorkflowContext``; ``ctx.start_child`` returns a
``ChildHandle``, ``ctx.create_hook`` a ``Hook``. ``RetryPolicy`` says how a failing
step is retried; ``Concurrency`` bounds a workflow's active runs per key, ``Rate``
how often runs start or steps run, ``Debounce`` folds triggers. Errors are
in ``stepd.errors``.

The server is ``stepd.server`` (``pip install 'stepd[server]'``); this package
never imports it, nor SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepd._children import ChildHandle
    from stepd._client import Client, PublishedEvent, RunHandle
    from stepd._concurrency import Concurrency
    from stepd._context import WorkflowContext
    from stepd._definitions import Step, Workflow, step, workflow
    from stepd._flow import Debounce, Rate
    from stepd._hooks import Hook
    from stepd._policy import RetryPolicy
    from stepd._runs import RunInfo, RunStatus
    from stepd._worker import Worker
    from stepd.errors import NotFoundError, RunCancelledError, RunFailedError, StepdError

# The names above are loaded on first use (PEP 562), so ``import stepd.server``
# (whose package root this is) and ``import stepd.v1`` do not load the SDK:
# the server starts 0.2 s sooner. ``from stepd import Client`` works as usual.
_HOME = {
    "ChildHandle": "stepd._children",
    "Client": "stepd._client",
    "PublishedEvent": "stepd._client",
    "RunHandle": "stepd._client",
    "Concurrency": "stepd._concurrency",
    "Debounce": "stepd._flow",
    "Rate": "stepd._flow",
    "WorkflowContext": "stepd._context",
    "Step": "stepd._definitions",
    "Workflow": "stepd._definitions",
    "step": "stepd._definitions",
    "workflow": "stepd._definitions",
    "Hook": "stepd._hooks",
    "RetryPolicy": "stepd._policy",
    "RunInfo": "stepd._runs",
    "RunStatus": "stepd._runs",
    "Worker": "stepd._worker",
    "NotFoundError": "stepd.errors",
    "RunCancelledError": "stepd.errors",
    "RunFailedError": "stepd.errors",
    "StepdError": "stepd.errors",
}


def __getattr__(name: str) -> object:
    if name == "__version__":
        value: object = _version()
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:
        raise AttributeError(f"module 'stepd' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME, "__version__"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepd")
    except PackageNotFoundError:  # pragma: no cover - a checkout without an install
        return "0+unknown"


__all__ = [
    "ChildHandle",
    "Client",
    "Concurrency",
    "Debounce",
    "Hook",
    "NotFoundError",
    "PublishedEvent",
    "Rate",
    "RetryPolicy",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "RunInfo",
    "RunStatus",
    "Step",
    "StepdError",
    "Worker",
    "Workflow",
    "WorkflowContext",
    "step",
    "workflow",
]
