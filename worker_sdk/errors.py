"""Errors raised by the stepd SDK.

Every error the SDK raises on purpose derives from one base class::

    StepdError
    ├── WorkflowDefinitionError    a @workflow, @step or Worker is defined wrongly
    │                              (raised when the decorator is applied)
    ├── PayloadError               a value cannot be turned into JSON or back into
    │                              its annotated type
    ├── StepFailedError            a recorded step error whose type cannot be rebuilt
    │   └── RetryExhaustedError    a step failed on the last attempt its retry policy
    │                              allows (the original error is __cause__)
    ├── NonRetryableError          raise it in a step: the step fails at once, never
    │                              retried
    ├── StepTimeoutError           a step attempt outlived its timeout and was
    │                              cancelled; also a builtin TimeoutError
    ├── NonDeterminismError        replay met a journal the workflow code cannot have
    │                              produced
    ├── WorkflowContextError       a WorkflowContext helper was used where it cannot
    │                              work (e.g. ctx.sleep inside a step body)
    ├── WaitTimeoutError           a durable wait (ctx.wait_for_signal,
    │                              ctx.wait_for_event or ctx.wait_for_hook with a
    │                              timeout) timed out; also a builtin TimeoutError
    ├── ChildFailedError           a child run awaited by its parent workflow failed
    │                              or was cancelled
    ├── RunFailedError             the awaited run finished with an error
    ├── RunCancelledError          the awaited run was cancelled
    │   (the server answered a call with an error status:)
    ├── NotFoundError              NOT_FOUND: no run (or other object) with that id
    ├── InvalidArgumentError       INVALID_ARGUMENT: a field of the request is wrong
    ├── AlreadyExistsError         ALREADY_EXISTS: e.g. a custom run id already used
    ├── FailedPreconditionError    FAILED_PRECONDITION: e.g. cancelling a finished run
    ├── ResourceExhaustedError     RESOURCE_EXHAUSTED: e.g. a payload over the limit
    ├── UnauthenticatedError       UNAUTHENTICATED: no API key, or an unknown, revoked
    │                              or expired one
    ├── PermissionDeniedError      PERMISSION_DENIED: the API key's role lacks the
    │                              right the call needs
    └── ServerUnavailableError     UNAVAILABLE: the server cannot be reached

Any other gRPC status is raised as a plain ``StepdError``; ``code`` holds the
status name (``"DEADLINE_EXCEEDED"``, ...) for errors that came from the server.

The worker also uses internal control-flow signals (a lost lease, a run the
server took back, a run suspended while it waits). They derive from
``BaseException``, not from ``StepdError``, so that a workflow's
``except Exception`` cannot swallow them; cancellation by the server reaches
workflow code as ``asyncio.CancelledError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepd._runs import RunInfo

__all__ = [
    "AlreadyExistsError",
    "ChildFailedError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NonDeterminismError",
    "NonRetryableError",
    "NotFoundError",
    "PayloadError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryExhaustedError",
    "RunCancelledError",
    "RunFailedError",
    "ServerUnavailableError",
    "StepFailedError",
    "StepTimeoutError",
    "StepdError",
    "UnauthenticatedError",
    "WaitTimeoutError",
    "WorkflowContextError",
    "WorkflowDefinitionError",
]


class StepdError(Exception):
    """Base class of every error the stepd SDK raises."""

    code: str | None = None
    """The gRPC status name when the error came from the server, else None."""


class WorkflowDefinitionError(StepdError):
    """A workflow, step or worker is defined wrongly."""


class PayloadError(StepdError):
    """A value cannot be serialized to JSON or validated back into its type."""


class StepFailedError(StepdError):
    """A recorded step error whose exception type cannot be rebuilt.

    Raised on replay in place of the original exception; ``error_type`` is the
    qualified type name (``module.QualName``) and ``error_message`` its message.
    """

    def __init__(self, error_type: str, error_message: str) -> None:
        super().__init__(f"{error_type}: {error_message}")
        self.error_type = error_type
        self.error_message = error_message

    def __reduce__(self) -> tuple[type[StepFailedError], tuple[str, str]]:
        return type(self), (self.error_type, self.error_message)


class RetryExhaustedError(StepFailedError):
    """A step with a retry policy failed on its last allowed attempt.

    ``error_type`` and ``error_message`` describe the last attempt's error (the
    exception itself, rebuilt, is ``__cause__``), ``attempts`` counts the
    attempts made and ``step_key`` names the step. Catch it to compensate.
    """

    def __init__(self, step_key: str, attempts: int, error_type: str, error_message: str) -> None:
        StepdError.__init__(
            self,
            f"step {step_key!r} failed after {attempts} attempts: {error_type}: {error_message}",
        )
        self.error_type = error_type
        self.error_message = error_message
        self.step_key = step_key
        self.attempts = attempts

    def __reduce__(self) -> tuple[type[RetryExhaustedError], tuple[str, int, str, str]]:  # type: ignore[override]
        return type(self), (self.step_key, self.attempts, self.error_type, self.error_message)


class NonRetryableError(StepdError):
    """Raise it (or a subclass) in a step to fail the step at once, whatever its retry
    policy allows."""


class StepTimeoutError(StepdError, TimeoutError):
    """A step attempt ran longer than the step's timeout and was cancelled.

    It counts as a failed attempt: the step's retry policy decides whether
    another follows. Recorded under the protocol name ``stepd.StepTimeoutError``.
    """


class NonDeterminismError(StepdError):
    """Replay met a journal the workflow code cannot have produced.

    The worker keeps such a run (it is neither failed nor completed) and logs
    this error until a worker with matching code picks the run up.
    """


class ChildFailedError(StepdError):
    """A child run the workflow awaited (``ctx.child`` or ``handle.result()``) failed or
    was cancelled.

    ``run_id`` and ``workflow_name`` name the child, ``status`` is ``"failed"`` or
    ``"cancelled"``; ``error_type`` and ``error_message`` are the child's error (its
    qualified type, e.g. ``"builtins.ValueError"``), or ``"stepd.Cancelled"`` and the
    cancel reason. Catch it to compensate; left uncaught it fails the parent.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str = "",
        workflow_name: str = "",
        status: str = "failed",
        error_type: str = "",
        error_message: str = "",
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.workflow_name = workflow_name
        self.status = status
        self.error_type = error_type
        self.error_message = error_message


class WorkflowContextError(StepdError):
    """A ``WorkflowContext`` helper was used where it cannot work.

    ``ctx.sleep()`` and ``ctx.sleep_until()`` inside a step body raise it (a step
    body runs once, outside the replay: it cannot suspend its run), and so does
    a ``ctx`` used by code that is not running its own workflow run.
    """


class WaitTimeoutError(StepdError, TimeoutError):
    """A durable wait timed out: ``ctx.wait_for_signal(name, timeout=...)`` got no signal
    in time, ``ctx.wait_for_event(name, timeout=...)`` no matching event, or the hook of
    ``ctx.wait_for_hook(hook, timeout=...)`` was not executed (it has expired).

    Raised in workflow code, on the first execution and on every replay, so the
    workflow can catch it and take another path (``except WaitTimeoutError`` or
    ``except TimeoutError``). ``wait_key`` is the wait's key (``signal:N``,
    ``event:N`` or ``hook:N``), ``signal`` the signal's name or ``event`` the event's name, and
    ``timeout`` the timeout in seconds, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        wait_key: str | None = None,
        signal: str | None = None,
        event: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(message)
        self.wait_key = wait_key
        self.signal = signal
        self.event = event
        self.timeout = timeout


class RunFailedError(StepdError):
    """The run finished with an error.

    ``error_type``, ``error_message`` and ``error_traceback`` describe the error
    the workflow raised; ``failure_reason`` says why the run failed
    (``"workflow_error"``, ``"deadline_exceeded"``, ...); ``info`` is the run.
    """

    def __init__(self, info: RunInfo) -> None:
        reason = info.failure_reason or "failed"
        detail = f"{info.error_type}: {info.error_message}" if info.error_type else reason
        super().__init__(f"run {info.run_id} failed ({reason}): {detail}")
        self.info = info
        self.run_id = info.run_id
        self.error_type = info.error_type
        self.error_message = info.error_message
        self.error_traceback = info.error_traceback
        self.failure_reason = info.failure_reason


class RunCancelledError(StepdError):
    """The run was cancelled; ``reason`` is the reason given, ``info`` the run."""

    def __init__(self, info: RunInfo) -> None:
        suffix = f": {info.cancel_reason}" if info.cancel_reason else ""
        super().__init__(f"run {info.run_id} was cancelled{suffix}")
        self.info = info
        self.run_id = info.run_id
        self.reason = info.cancel_reason


class NotFoundError(StepdError):
    """The server has no object with the given id (NOT_FOUND)."""


class InvalidArgumentError(StepdError):
    """The server rejected a field of the request (INVALID_ARGUMENT)."""


class AlreadyExistsError(StepdError):
    """The object to create already exists (ALREADY_EXISTS)."""


class FailedPreconditionError(StepdError):
    """The call does not fit the object's state (FAILED_PRECONDITION)."""


class ResourceExhaustedError(StepdError):
    """A limit was exceeded, e.g. the payload size (RESOURCE_EXHAUSTED)."""


class UnauthenticatedError(StepdError):
    """The server needs an API key and got none, or an unknown, revoked or expired one."""


class PermissionDeniedError(StepdError):
    """The API key's role lacks the right the call needs (the message names it)."""


class ServerUnavailableError(StepdError):
    """The server cannot be reached or is shutting down (UNAVAILABLE)."""
