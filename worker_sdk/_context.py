"""``WorkflowContext``: what a workflow function receives as its first argument."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, overload

from worker_sdk._definitions import (
    Step,
    StepScheduler,
    _StepDecorator,
    current_scheduler,
    current_step,
)
from worker_sdk.errors import WorkflowContextError

P = ParamSpec("P")
R = TypeVar("R")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The latest time a protobuf Timestamp holds: 9999-12-31T23:59:59.999999999Z.
_MAX_TIME_NS = 253_402_300_799_999_999_999


class WorkflowContext:
    """The running workflow's identity and durable helpers.

    Made by the worker for each execution of a run; workflow code reads
    ``run_id``, ``workflow_name`` and ``version``, wraps ad-hoc functions as
    steps with ``ctx.step``, and waits durably with ``ctx.sleep`` and
    ``ctx.sleep_until``.

    A context made by hand (``WorkflowContext("run", "wf", "1")``, e.g. to call a
    workflow function directly in a test) belongs to no run: its steps are plain
    calls and its sleeps are plain ``asyncio.sleep`` calls.
    """

    __slots__ = ("_run_id", "_scheduler", "_version", "_workflow_name")

    def __init__(
        self,
        run_id: str,
        workflow_name: str,
        version: str,
        scheduler: StepScheduler | None = None,
    ) -> None:
        self._run_id = run_id
        self._workflow_name = workflow_name
        self._version = version
        self._scheduler = scheduler

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

    def sleep(self, seconds: float | timedelta, /) -> Coroutine[Any, Any, None]:
        """Sleep durably: ``await ctx.sleep(3600)`` or ``await ctx.sleep(timedelta(days=7))``.

        The wake-up time (now + ``seconds``) is stored by the server. While the
        run has nothing to do but sleep, it is *suspended*: it holds no worker
        slot and survives worker and server restarts; when the time comes, any
        worker picks it up and replays it to this point, where the sleep returns
        at once. A sleep of 0 or fewer seconds returns at once.

        Each call gets a wait key when it is called (``sleep:1``, ``sleep:2``, ...
        in call order, across ``sleep`` and ``sleep_until``), so sleeps started
        together in ``asyncio.gather`` keep their keys on replay. Call it from
        workflow code only: inside a step body it raises ``WorkflowContextError``.
        """
        if isinstance(seconds, timedelta):
            duration_ns = (seconds // _MICROSECOND) * 1000
        elif isinstance(seconds, int | float) and not isinstance(seconds, bool):
            if math.isnan(seconds):
                raise ValueError("ctx.sleep() needs a number of seconds, got nan")
            if math.isinf(seconds) and seconds > 0:
                raise ValueError("ctx.sleep(inf): a sleep must end before the year 10000")
            duration_ns = -1 if seconds < 0 else round(seconds * 1e9)
        else:
            raise TypeError(
                f"ctx.sleep() takes seconds (int or float) or a timedelta, got {seconds!r}"
            )
        scheduler = self._scheduler_for("sleep")
        if duration_ns > _MAX_TIME_NS - time.time_ns():
            raise ValueError(f"ctx.sleep({seconds!r}): a sleep must end before the year 10000")
        if scheduler is None:
            return asyncio.sleep(max(duration_ns, 0) / 1e9)
        return scheduler.call_sleep(duration_ns=duration_ns)

    def sleep_until(self, when: datetime, /) -> Coroutine[Any, Any, None]:
        """Sleep durably until ``when`` (a ``datetime``; a naive one is taken as UTC).

        Like ``ctx.sleep``: the run is suspended until then and the call takes the
        next wait key (``sleep:N``). A time that has passed returns at once.
        """
        if not isinstance(when, datetime):
            raise TypeError(f"ctx.sleep_until() takes a datetime, got {when!r}")
        if when.tzinfo is None or when.utcoffset() is None:
            when = when.replace(tzinfo=UTC)
        until_ns = ((when - _EPOCH) // _MICROSECOND) * 1000
        scheduler = self._scheduler_for("sleep_until")
        if scheduler is None:
            return asyncio.sleep(max(until_ns - time.time_ns(), 0) / 1e9)
        return scheduler.call_sleep(until_ns=until_ns)

    def _scheduler_for(self, helper: str) -> StepScheduler | None:
        """The run's scheduler, checking that the caller is the run's workflow code."""
        step_name = current_step.get()
        if step_name is not None:
            raise WorkflowContextError(
                f"ctx.{helper}() was called inside the body of step {step_name!r}: a step "
                "body runs once and is not replayed, so it cannot sleep durably. Sleep in "
                "the workflow between steps (or use asyncio.sleep inside the step)."
            )
        scheduler = self._scheduler
        if scheduler is not None and current_scheduler.get() is not scheduler:
            raise WorkflowContextError(
                f"ctx.{helper}() was called outside the workflow code of run {self._run_id}: "
                "a WorkflowContext works only in the run it was given to"
            )
        return scheduler

    def __repr__(self) -> str:
        return (
            f"WorkflowContext(run_id={self._run_id!r}, workflow_name={self._workflow_name!r}, "
            f"version={self._version!r})"
        )
