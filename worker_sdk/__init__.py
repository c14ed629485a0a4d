"""stepd worker SDK: durable workflows as ordinary async Python.

Define workflows with ``@workflow`` and steps with ``@step``, serve them with
``Worker``, and start and inspect runs with ``Client``. ``RetryPolicy`` says how a
failing step is retried. Errors are in ``worker_sdk.errors``.
"""

from worker_sdk._client import Client, RunHandle
from worker_sdk._context import WorkflowContext
from worker_sdk._definitions import step, workflow
from worker_sdk._hooks import Hook
from worker_sdk._policy import RetryPolicy
from worker_sdk._runs import RunInfo, RunStatus
from worker_sdk._worker import Worker
from worker_sdk.errors import NotFoundError, RunCancelledError, RunFailedError, StepdError

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
