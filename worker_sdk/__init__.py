"""stepd worker SDK: durable workflows as ordinary async Python.

Define workflows with ``@workflow`` and steps with ``@step``, serve them with
``Worker``, and start and inspect runs with ``Client``. ``RetryPolicy`` says how a
failing step is retried. Errors are in ``stepd.errors``.

The server is ``stepd.server`` (``pip install 'stepd[server]'``); this package
never imports it, nor SQLAlchemy.
"""

from importlib.metadata import PackageNotFoundError, version

from stepd._client import Client, RunHandle
from stepd._context import WorkflowContext
from stepd._definitions import step, workflow
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
    "Client",
    "Hook",
    "NotFoundError",
    "RetryPolicy",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "RunInfo",
    "RunStatus",
    "StepdError",
    "Worker",
    "WorkflowContext",
    "step",
    "workflow",
]
