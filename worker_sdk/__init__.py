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

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("stepd")
except PackageNotFoundError:  # pragma: no cover - a checkout without an install
    __version__ = "0+unknown"

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
