"""Steps and workflows a test replaced with mocks, and the runtime that honours them.

A mocked step's body never runs: each attempt awaits the mock instead, called
with the step's arguments (checked against the step's signature, so a call the
real step would refuse fails the same way), and its result is recorded as the
step's, through the step's return type. Retries, timeouts and replays apply as
to the real step. A mocked workflow's runs call the mock with their input
(nothing for a workflow without input) instead of the workflow's function.
Mocks are ``unittest.mock.AsyncMock`` objects: ``return_value`` and
``side_effect`` (a function, an exception, or values in turn) say what they do,
and ``assert_awaited_once_with(...)``, ``await_count``, ``await_args_list``
what they were called with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any
from unittest.mock import AsyncMock

from pydantic import ValidationError

from stepd._definitions import Step, Workflow, current_scheduler, current_step


class Mocks:
    """The mocked steps and workflows of a test environment, by name."""

    def __init__(self) -> None:
        self._steps: dict[str, tuple[AsyncMock, inspect.Signature | None]] = {}
        self._workflows: dict[str, AsyncMock] = {}

    def mock_step(
        self, step: Step[Any, Any] | str, return_value: Any, side_effect: Any
    ) -> AsyncMock:
        """Replace the body of ``step`` (a step, or a step name) from now on."""
        if isinstance(step, Step):
            name, signature = step.name, _signature(step.fn)
        elif isinstance(step, str) and step:
            name, signature = step, None
        else:
            raise TypeError(f"mock_step() takes a @step or a step name, got {step!r}")
        mock = AsyncMock(name=f"step {name}", return_value=return_value, side_effect=side_effect)
        self._steps[name] = (mock, signature)
        return mock

    def mock_workflow(
        self, workflow: Workflow[Any, Any], return_value: Any, side_effect: Any
    ) -> AsyncMock:
        """Replace the function of ``workflow``'s runs from now on."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"mock_workflow() takes a @workflow, got {workflow!r}")
        mock = AsyncMock(
            name=f"workflow {workflow.name}", return_value=return_value, side_effect=side_effect
        )
        self._workflows[workflow.name] = mock
        return mock

    # -- the runtime's functions (stepd._runtime.Runtime) ---------------------------------

    def run_step(
        self, step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """One attempt of a step body: the mock's, when the step is mocked."""
        mocked = self._steps.get(step.name)
        if mocked is None:
            return step.invoke(args, kwargs)
        mock, signature = mocked
        return _call_mock(step, mock, signature, args, kwargs)

    def workflow_function(
        self, workflow: Workflow[Any, Any]
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        """The function a run of ``workflow`` calls: the mock's, when it is mocked."""
        mock = self._workflows.get(workflow.name)
        if mock is None:
            return workflow.fn

        async def mocked(ctx: Any, *input: Any) -> Any:
            return await mock(*input)

        return mocked


async def _call_mock(
    step: Step[Any, Any],
    mock: AsyncMock,
    signature: inspect.Signature | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    if signature is not None:
        signature.bind(*args, **kwargs)  # TypeError, as the real step would raise
    token = current_scheduler.set(None)  # as in a step body: steps called here run plainly
    step_token = current_step.set(step.name)
    try:
        result = await mock(*args, **kwargs)
    finally:
        current_step.reset(step_token)
        current_scheduler.reset(token)
    try:
        step.result_adapter.validate_python(result)
    except ValidationError as exc:
        raise TypeError(
            f"the mock of step {step.name!r} returned {result!r}, which the step's return "
            f"type refuses ({exc.errors()[0]['msg']}); give mock_step a return_value or "
            "side_effect of that type"
        ) from None
    return result


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None
