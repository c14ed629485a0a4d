"""``WorkflowContext``: what a workflow function receives as its first argument."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from worker_sdk._definitions import Step, _StepDecorator

P = ParamSpec("P")
R = TypeVar("R")


class WorkflowContext:
    """The running workflow's identity and durable helpers.

    Made by the worker for each execution of a run; workflow code reads
    ``run_id``, ``workflow_name`` and ``version`` and wraps ad-hoc functions as
    steps with ``ctx.step``.
    """

    __slots__ = ("_run_id", "_version", "_workflow_name")

    def __init__(self, run_id: str, workflow_name: str, version: str) -> None:
        self._run_id = run_id
        self._workflow_name = workflow_name
        self._version = version

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._run_id

    @property
    def workflow_name(self) -> str:
        """The workflow's name."""
        return self._workflow_name

    @property
    def version(self) -> str:
        """The workflow version the run is pinned to."""
        return self._version

    @overload
    def step(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...
    @overload
    def step(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def step(self, /, *, name: str) -> _StepDecorator: ...
    def step(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        """Make any function a step of this workflow.

        ``await ctx.step(fetch)(url)`` records the call as step ``fetch``;
        ``@ctx.step`` and ``@ctx.step(name="x")`` decorate a local function. The
        step's name defaults to the function's ``__name__``.
        """
        if fn is None:
            return _StepDecorator(name)
        return Step(fn, name=name)

    def __repr__(self) -> str:
        return (
            f"WorkflowContext(run_id={self._run_id!r}, workflow_name={self._workflow_name!r}, "
            f"version={self._version!r})"
        )
