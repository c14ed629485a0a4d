"""What a worker's runs take from outside the workflow's code: the time, and the
bodies of steps and workflows.

``SYSTEM`` reads the system clock and runs the code as written. A ``Worker``
takes the runtime that is current when it is made (``current()``) and hands it
to every run it executes. ``stepd.testing`` makes its worker inside
``using(...)`` with a runtime of its own: the test environment's clock (which
skips ahead), and the steps and workflows a test replaced. Nothing else sets
one, so a worker outside a test environment always runs on ``SYSTEM``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepd._definitions import Step, Workflow

RunStep = Callable[
    ["Step[Any, Any]", str, tuple[Any, ...], dict[str, Any]], Coroutine[Any, Any, Any]
]
"""Runs one attempt of a step body: (step, step key, args, kwargs) -> its result."""
WorkflowFunction = Callable[["Workflow[Any, Any]"], Callable[..., Coroutine[Any, Any, Any]]]
"""The function a run of a workflow calls with ``(ctx[, input])``."""


def run_step(
    step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Coroutine[Any, Any, Any]:
    """Run the step's own body."""
    return step.invoke(args, kwargs)


def workflow_function(workflow: Workflow[Any, Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The workflow's own function."""
    return workflow.fn


@dataclass(frozen=True, slots=True)
class Runtime:
    """The clock a worker's runs read, and how they run step bodies and workflows."""

    time_ns: Callable[[], int] = time.time_ns
    """The time, in epoch nanoseconds: ``ctx.now()``, and when sleeps and timeouts end."""
    run_step: RunStep = run_step
    """Runs one attempt of a step body."""
    workflow_function: WorkflowFunction = workflow_function
    """The function a run of a workflow calls."""


SYSTEM = Runtime()
"""The system clock and the code as written."""

_current: contextvars.ContextVar[Runtime] = contextvars.ContextVar("stepd_runtime", default=SYSTEM)


def current() -> Runtime:
    """The runtime a worker made now takes."""
    return _current.get()


@contextmanager
def using(runtime: Runtime) -> Iterator[None]:
    """Make ``runtime`` current for the block (for the workers made in it)."""
    token = _current.set(runtime)
    try:
        yield
    finally:
        _current.reset(token)
