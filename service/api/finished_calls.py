"""Calls that change state finish what they started when their caller goes away.

grpc cancels a handler when its caller cancels the call, its deadline passes or
its connection drops. A handler that changes state does its work in steps: a
store write, then what follows its commit in memory (a woken run queued for a
worker, a cancelled run's worker told and its waiters answered, a schedule's
timer set). Cancelled between the two, the write stays and what follows is
lost: a signalled run stayed woken in the store, queued nowhere, until the
server restarted. So the handlers of ``FINISHED_METHODS`` run as tasks that a
cancellation of the call does not interrupt; the caller still gets its
cancellation at once. Reads stay cancellable (a ``GetRun`` wait ends with its
caller), and ``Trigger`` finishes storing and handing out its run on its own
(``Engine.trigger``), as its wait must end with its caller too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stepd.server.api.rpc_wrapping import Handler
from stepd.server.unheard import Unheard

_WORKFLOW = "/stepd.v1.WorkflowService/"
_ADMIN = "/stepd.v1.AdminService/"

#: The unary methods that change state (``Trigger`` aside: see the module docstring).
FINISHED_METHODS = frozenset(
    {
        _WORKFLOW + "CancelRun",
        _WORKFLOW + "Signal",
        _WORKFLOW + "ExecuteHook",
        _WORKFLOW + "PublishEvent",
        _WORKFLOW + "CreateSchedule",
        _WORKFLOW + "PauseSchedule",
        _WORKFLOW + "ResumeSchedule",
        _WORKFLOW + "DeleteSchedule",
        _WORKFLOW + "TriggerSchedule",
        _WORKFLOW + "RetryRun",
        _WORKFLOW + "ForkRun",
        _WORKFLOW + "DeleteRun",
        _WORKFLOW + "CancelRuns",
        _WORKFLOW + "RetryRuns",
        _ADMIN + "CreateApiKey",
        _ADMIN + "RevokeApiKey",
        _ADMIN + "PinWorkflowVersion",
        _ADMIN + "UnpinWorkflowVersion",
        _ADMIN + "RetireWorkflowVersion",
    }
)


class FinishedCalls:
    """Wraps the handlers of ``FINISHED_METHODS`` (a ``Wrap``) and keeps the calls
    whose caller went away until they are done."""

    def __init__(self) -> None:
        self._unheard = Unheard()

    @property
    def unheard(self) -> int:
        """How many calls are still finishing for a caller that went away."""
        return len(self._unheard)

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler``, finishing once started when ``method`` changes state."""
        if method not in FINISHED_METHODS or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        unheard = self._unheard

        async def finished(request: Any, context: Any) -> Any:
            # The task starts in a copy of this context: the caller's principal
            # and span go with it.
            return await unheard.finish(asyncio.ensure_future(inner(request, context)))

        return handler._replace(unary_unary=finished)
