"""The ``@workflow`` and ``@step`` decorators and the objects they make.

Both decorators keep the decorated function's signature for type checkers,
work bare and with keyword options, and check the definition when applied.
``WorkflowContext`` builds on this module, so a workflow's first parameter is
typed ``Any`` here and checked (by class) when ``@workflow`` is applied.
A ``Step`` called inside a running workflow is handed to that run's step
scheduler (the replay engine, found through a context variable); called
anywhere else, it just runs the function.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import re
import typing
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from pydantic import TypeAdapter

from stepd._concurrency import Concurrency, check_concurrency
from stepd._flow import Debounce, Rate, check_debounce, check_priority, check_rate
from stepd._policy import Duration, RetryPolicy, optional_duration, retry_policy
from stepd._policy import max_entries as _max_entries
from stepd._serde import adapter_for
from stepd.errors import WorkflowDefinitionError
from stepd.schedules import Schedule

if TYPE_CHECKING:
    from stepd._children import ChildHandle
    from stepd._hooks import Hook

P = ParamSpec("P")
R = TypeVar("R")

_CONTEXT_NAME = "WorkflowContext"
_CONTEXT_TYPE = f"stepd._context.{_CONTEXT_NAME}"
"""The class a workflow's first parameter must be (or derive from)."""

_RESERVED_KEY = re.compile(
    r"(?:sleep|signal|event|hook|entry|child|now|uuid|random):[0-9]+(?::[a-z]+)?"
)
"""Keys of the SDK's own journal entries (``event:N:since``) and their look-alikes:
not a step name, so that no step key can be one."""

#: The server's limits on what a worker's hello declares (docs/operations.md#limits).
MAX_EVENT_TRIGGERS = 32
MAX_NAME_LENGTH = 200
MAX_EXECUTION_TIMEOUT = 3650 * 86400.0


class StepScheduler(Protocol):
    """Runs or replays the steps and waits a workflow calls (implemented by the replay
    engine)."""

    def call_step(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its step key now; return the coroutine that yields its result."""
        ...

    def call_sleep(
        self, *, duration_ns: int | None = None, until_ns: int | None = None
    ) -> Coroutine[Any, Any, None]:
        """Assign the call its wait key now; return the coroutine that sleeps durably
        for ``duration_ns`` from now, or until ``until_ns`` (Unix time)."""
        ...

    def call_signal(
        self, name: str, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its wait keys now; return the coroutine that waits durably for
        the next signal ``name`` (at most ``timeout_ns``) and yields its payload."""
        ...

    def call_event(
        self, name: str, *, match_json: str, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its wait keys now; return the coroutine that waits durably for
        the first event ``name`` published from now on whose payload has the fields of
        ``match_json`` (at most ``timeout_ns``) and yields its payload."""
        ...

    def create_hook(self) -> Hook:
        """Assign the run's next hook its wait key now and derive its token."""
        ...

    def call_hook(
        self, hook: Hook, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Return the coroutine that waits durably until ``hook`` is executed (at most
        ``timeout_ns``) and yields its payload."""
        ...

    def call_record(self, name: str, payload_json: str, *, progress: bool = False) -> None:
        """Assign the entry its key now and send it to the run's history (not awaited);
        ``progress``: the entry is the run's progress."""
        ...

    def call_child(
        self,
        workflow_name: str,
        version: str,
        input_json: str,
        *,
        detached: bool,
        adapter: TypeAdapter[Any],
    ) -> Coroutine[Any, Any, ChildHandle[Any]]:
        """Assign the call its key now (``child:N``); return the coroutine that starts
        the child (once) and yields its handle."""
        ...

    def call_value(self, kind: str, make: Callable[[], Any]) -> Any:
        """Assign the call its key now (``KIND:N``); return the value recorded for it,
        or ``make()``, recorded."""
        ...

    def now_ns(self) -> int:
        """The run's clock: the time, in epoch nanoseconds (the system's, except in a
        ``stepd.testing`` environment, whose clock skips ahead)."""
        ...


current_scheduler: contextvars.ContextVar[StepScheduler | None] = contextvars.ContextVar(
    "stepd_current_scheduler", default=None
)
"""The scheduler of the workflow run executing in this context (None outside runs and
inside step bodies)."""

current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stepd_current_step", default=None
)
"""The name of the step whose body is executing in this context (None elsewhere)."""


class _Hints:
    """A function's type hints, resolved when first needed (forward references)."""

    __slots__ = ("_fn", "_hints", "_owner")

    def __init__(self, fn: Callable[..., Any], owner: str) -> None:
        self._fn = fn
        self._owner = owner
        self._hints: dict[str, Any] | None = None
        try:
            self._hints = typing.get_type_hints(_hint_target(fn), include_extras=True)
        except NameError:
            pass  # a forward reference not defined yet: retry on first use
        except Exception:
            self._hints = {}

    def get(self, name: str) -> Any:
        if self._hints is None:
            try:
                self._hints = typing.get_type_hints(_hint_target(self._fn), include_extras=True)
            except Exception as exc:
                raise WorkflowDefinitionError(
                    f"cannot resolve the type annotations of {self._owner}: {exc}"
                ) from exc
        return self._hints.get(name, Any)


def _hint_target(fn: Callable[..., Any]) -> Any:
    if isinstance(fn, functools.partial):
        return _hint_target(fn.func)
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return fn
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - a callable object's method
    return call if call is not None else fn


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def _callable_name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class Step(Generic[P, R]):
    """A function whose calls inside a workflow are recorded as durable steps.

    Made by ``@step`` or ``ctx.step``; ``Step[P, R]`` keeps the function's
    parameters ``P`` and result ``R`` for type checkers. Calling it returns a
    coroutine. Inside a workflow run the call gets its step key at once
    (``name``, then ``name#2``, ...); a step already in the run's journal
    returns the recorded result (or raises the recorded error) without
    running. Outside a workflow, the function just runs.
    """

    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __init__(
        self,
        fn: Callable[P, Any],
        name: str | None = None,
        *,
        retry: RetryPolicy | int | None = None,
        timeout: Duration | None = None,
        rate: Rate | None = None,
    ) -> None:
        if isinstance(fn, Workflow):
            raise WorkflowDefinitionError(f"{fn.name!r} is a workflow; it cannot be a step")
        if isinstance(fn, Step):
            fn = fn.fn
        if not callable(fn):
            raise WorkflowDefinitionError(f"a step must be callable, got {fn!r}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise WorkflowDefinitionError(
                f"step {_callable_name(fn)!r} is a generator; a step must return a value"
            )
        step_name = _callable_name(fn) if name is None else name
        _check_name(step_name, "step")
        if "#" in step_name:
            raise WorkflowDefinitionError(
                f"step name {step_name!r} must not contain '#' (it marks repeated calls)"
            )
        if _RESERVED_KEY.fullmatch(step_name):
            raise WorkflowDefinitionError(
                f"step name {step_name!r} has the form of the SDK's own keys "
                "(e.g. 'event:1:since', recorded beside the steps); choose another name"
            )
        self.name = step_name
        """The step's name: the first part of its step keys."""
        self.retry = retry_policy(retry, f"step {step_name!r}")
        """The step's retry policy; None takes the workflow's default."""
        self.timeout = optional_duration(timeout, f"step {step_name!r}: timeout")
        """Seconds an attempt may run before it is cancelled and counted as failed;
        None takes the workflow's default step timeout (if any)."""
        self.rate = check_rate(rate, f"step {step_name!r}", key_path=False)
        """The rate limit each attempt takes a turn under (None: none)."""
        self.fn: Callable[P, Any] = fn
        """The decorated function."""
        self.is_async = _is_async_callable(fn)
        """True for ``async def`` steps; others run in a thread via ``asyncio.to_thread``."""
        self._hints = _Hints(fn, f"step {step_name!r}")
        self._adapter: TypeAdapter[Any] | None = None
        functools.update_wrapper(self, fn)

    @property
    def result_adapter(self) -> TypeAdapter[Any]:
        """The TypeAdapter of the step's return annotation (``Any`` when absent)."""
        adapter = self._adapter
        if adapter is None:
            adapter = self._adapter = adapter_for(self._hints.get("return"))
        return adapter

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        scheduler = current_scheduler.get()
        if scheduler is not None:
            return scheduler.call_step(self, args, kwargs)
        if self.is_async:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        return self._call_sync(*args, **kwargs)

    async def _call_sync(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    async def invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the function once, as a step body: a sync function in a thread.

        The thread (``asyncio.to_thread``) is what keeps a sync step from blocking
        the event loop, which also runs the worker's heartbeat timer: a step body
        that blocks the loop (``time.sleep`` in an ``async def``, say) starves the
        heartbeats, and a loop blocked longer than the server's lease timeout
        loses every run the worker holds. A cancelled sync step's thread cannot
        be stopped; it is abandoned and its result is never recorded.
        """
        token = current_scheduler.set(None)  # steps called inside a step are plain calls
        step_token = current_step.set(self.name)  # ctx.sleep() refuses to run here
        try:
            if self.is_async:
                return await self.fn(*args, **kwargs)
            return await asyncio.to_thread(self.fn, *args, **kwargs)
        finally:
            current_step.reset(step_token)
            current_scheduler.reset(token)

    def __repr__(self) -> str:
        return f"<step {self.name!r}>"


class Workflow(Generic[P, R]):
    """A workflow definition made by ``@workflow``: a name, a version and an async function.

    ``Workflow[[I], R]`` is a workflow whose input is an ``I`` and whose result is
    an ``R`` (``Workflow[[], R]`` takes no input): what ``Client.trigger``,
    ``Client.execute``, ``ctx.child`` and ``Worker`` accept. Calling it calls the
    function directly (no run is created); use ``Client.trigger`` to start a run
    and ``Worker`` to serve it.
    """

    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __init__(
        self,
        fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]],
        name: str | None = None,
        version: str | int = "1",
        events: Iterable[str] = (),
        schedule: Schedule | str | None = None,
        *,
        retry: RetryPolicy | int | None = None,
        step_timeout: Duration | None = None,
        execution_timeout: Duration | None = None,
        max_entries: int | None = None,
        concurrency: Concurrency | None = None,
        priority: int = 0,
        start_rate: Rate | None = None,
        debounce: Debounce | None = None,
    ) -> None:
        if isinstance(fn, (Workflow, Step)):
            raise WorkflowDefinitionError(f"{fn!r} is already decorated")
        fn_name = _callable_name(fn)
        if not inspect.iscoroutinefunction(fn):
            raise WorkflowDefinitionError(f"workflow {fn_name!r} must be defined with 'async def'")
        workflow_name = fn_name if name is None else name
        _check_name(workflow_name, "workflow")
        if isinstance(version, bool) or not isinstance(version, (str, int)):
            raise WorkflowDefinitionError(
                f"workflow {workflow_name!r}: version must be a str or int, got {version!r}"
            )
        version_text = str(version)
        if not version_text.strip():
            raise WorkflowDefinitionError(f"workflow {workflow_name!r}: version must not be empty")
        self.name = workflow_name
        """The workflow's name."""
        self.version = version_text
        """The workflow's version, as a string."""
        what = f"workflow {workflow_name!r}"
        self.retry = retry_policy(retry, what)
        """The retry policy of steps that declare none (None: one attempt)."""
        self.step_timeout = optional_duration(step_timeout, f"{what}: step_timeout")
        """The timeout (seconds) of steps that declare none (None: no timeout)."""
        self.execution_timeout = optional_duration(execution_timeout, f"{what}: execution_timeout")
        if self.execution_timeout is not None and self.execution_timeout > MAX_EXECUTION_TIMEOUT:
            raise WorkflowDefinitionError(
                f"{what}: execution_timeout is at most {MAX_EXECUTION_TIMEOUT:.0f} s (3,650 days)"
            )
        """Seconds a run may take from its start before the server fails it."""
        self.max_entries = _max_entries(max_entries, what)
        """The most journal entries a run may record (None: the server's default)."""
        self.concurrency = check_concurrency(concurrency, what)
        """The limit on active runs per key (None: no limit)."""
        self.priority = check_priority(priority, what)
        """The priority of runs whose trigger sets none (higher: handed out first)."""
        self.start_rate = check_rate(start_rate, what, key_path=True)
        """The limit on how often runs start (None: none)."""
        self.debounce = check_debounce(debounce, what)
        """How triggers of one key fold into one run (None: they do not)."""
        if self.debounce is not None and self.start_rate is not None:
            raise WorkflowDefinitionError(f"{what}: debounce and start_rate cannot be combined")
        self.fn = fn
        """The decorated function."""
        self.input_param, self.input_optional = _check_workflow_signature(fn, workflow_name)
        self.events = _check_events(events, workflow_name)
        """Event names whose every publication starts a run (the payload is the input)."""
        self.schedule = _check_schedule(schedule, workflow_name)
        """The cron schedule that starts runs of this workflow, if any (id: its name)."""
        self._hints = _Hints(fn, f"workflow {workflow_name!r}")
        self._input_adapter: TypeAdapter[Any] | None = None
        self._result_adapter: TypeAdapter[Any] | None = None
        functools.update_wrapper(self, fn)

    @property
    def input_adapter(self) -> TypeAdapter[Any]:
        """The TypeAdapter of the input parameter's annotation (``Any`` when absent)."""
        adapter = self._input_adapter
        if adapter is None:
            tp = self._hints.get(self.input_param) if self.input_param else type(None)
            adapter = self._input_adapter = adapter_for(tp)
        return adapter

    @property
    def result_adapter(self) -> TypeAdapter[Any]:
        """The TypeAdapter of the return annotation (``Any`` when absent)."""
        adapter = self._result_adapter
        if adapter is None:
            adapter = self._result_adapter = adapter_for(self._hints.get("return"))
        return adapter

    def __call__(self, ctx: Any, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self.fn(ctx, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<workflow {self.name!r} version {self.version!r}>"


def _check_events(events: Iterable[str], workflow_name: str) -> tuple[str, ...]:
    if isinstance(events, str):
        raise WorkflowDefinitionError(
            f"workflow {workflow_name!r}: events must be a list of event names, not one string"
        )
    names = tuple(events)
    for event in names:
        if not isinstance(event, str) or not event.strip() or len(event) > MAX_NAME_LENGTH:
            raise WorkflowDefinitionError(
                f"workflow {workflow_name!r}: event names must be non-empty strings of at "
                f"most {MAX_NAME_LENGTH} characters, got {event!r:.60}"
            )
    unique = tuple(dict.fromkeys(names))
    if len(unique) > MAX_EVENT_TRIGGERS:
        raise WorkflowDefinitionError(
            f"workflow {workflow_name!r}: at most {MAX_EVENT_TRIGGERS} events start a workflow, "
            f"got {len(unique)}"
        )
    return unique


def _check_schedule(schedule: Schedule | str | None, workflow_name: str) -> Schedule | None:
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, str):
        raise WorkflowDefinitionError(
            f"workflow {workflow_name!r}: schedule must be a Schedule or a cron string, "
            f"got {schedule!r}"
        )
    try:
        return Schedule(schedule)
    except ValueError as exc:
        raise WorkflowDefinitionError(f"workflow {workflow_name!r}: {exc}") from None


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise WorkflowDefinitionError(f"{what} name must be a non-empty string, got {name!r}")


def _check_workflow_signature(fn: Callable[..., Any], name: str) -> tuple[str | None, bool]:
    """Check ``(ctx[, input])``; return the input parameter's name and whether it has a default."""
    params = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        raise WorkflowDefinitionError(
            f"workflow {name!r} must take the WorkflowContext as its first parameter"
        )
    annotation = params[0].annotation
    if annotation is not inspect.Parameter.empty and not _is_context_annotation(annotation):
        raise WorkflowDefinitionError(
            f"workflow {name!r}: the first parameter must be the WorkflowContext, "
            f"annotated {annotation!r}"
        )
    rest = params[1:]
    if len(rest) > 1 or any(p.kind not in positional for p in rest):
        raise WorkflowDefinitionError(
            f"workflow {name!r} must take (ctx) or (ctx, input): at most one input "
            "parameter, no *args, **kwargs or keyword-only parameters "
            "(put several values in one model or dataclass)"
        )
    if not rest:
        return None, True
    return rest[0].name, rest[0].default is not inspect.Parameter.empty


def _is_context_annotation(annotation: object) -> bool:
    """True for ``WorkflowContext`` (or a subclass, or its name as a string annotation).

    Known by name: the context's module builds on this one and is not imported here.
    """
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == _CONTEXT_NAME
    if isinstance(annotation, type):
        return any(
            f"{cls.__module__}.{cls.__qualname__}" == _CONTEXT_TYPE for cls in annotation.__mro__
        )
    return False


class StepDecorator:
    """``step(name=..., retry=..., timeout=...)``: applies the options to the function
    it decorates (checked at once)."""

    def __init__(
        self,
        name: str | None,
        retry: RetryPolicy | int | None,
        timeout: Duration | None,
        rate: Rate | None = None,
    ) -> None:
        self._name = name
        self._retry = retry_policy(retry, "step")
        self._timeout = timeout
        optional_duration(timeout, "step: timeout")
        self._rate = check_rate(rate, "step", key_path=False)

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Step[Any, Any]:
        return Step(fn, name=self._name, retry=self._retry, timeout=self._timeout, rate=self._rate)


@overload
def step(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...
@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    retry: RetryPolicy | int | None = None,
    timeout: Duration | None = None,
    rate: Rate | None = None,
) -> StepDecorator: ...
def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | int | None = None,
    timeout: Duration | None = None,
    rate: Rate | None = None,
) -> Any:
    """Make a function a durable step: bare ``@step`` or ``@step(name="charge", ...)``.

    ``async def`` and plain functions are allowed (plain ones run in a thread).
    Inside a workflow each call is recorded; its result must be JSON-serializable
    as its return annotation says. Outside a workflow the function just runs.
    ``retry`` (a ``RetryPolicy``, or a number of attempts) and ``timeout`` (a
    duration per attempt) override the workflow's defaults. ``rate`` (a
    ``Rate``) makes each attempt wait for its turn under a rate limit the
    server enforces across all workers.
    """
    if fn is None:
        return StepDecorator(name, retry, timeout, rate)
    return Step(fn, name=name, retry=retry, timeout=timeout, rate=rate)


class _WorkflowDecorator:
    """``workflow(name=..., version=..., ...)``: applies the options to the function
    (checked at once)."""

    def __init__(
        self,
        name: str | None,
        version: str | int,
        events: Iterable[str],
        schedule: Schedule | str | None,
        options: dict[str, Any],
    ) -> None:
        self._name = name
        self._version = version
        self._events = events
        self._schedule = schedule
        self._options = options
        what = "workflow" if name is None else f"workflow {name!r}"
        retry_policy(options["retry"], what)
        for option in ("step_timeout", "execution_timeout"):
            optional_duration(options[option], f"{what}: {option}")
        _max_entries(options["max_entries"], what)
        check_concurrency(options["concurrency"], what)
        check_priority(options["priority"], what)
        check_rate(options["start_rate"], what, key_path=True)
        check_debounce(options["debounce"], what)

    def __call__(
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> Workflow[P, R]:
        return Workflow(
            fn,
            name=self._name,
            version=self._version,
            events=self._events,
            schedule=self._schedule,
            **self._options,
        )


@overload
def workflow(fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /) -> Workflow[P, R]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    version: str | int = "1",
    events: Iterable[str] = (),
    schedule: Schedule | str | None = None,
    retry: RetryPolicy | int | None = None,
    step_timeout: Duration | None = None,
    execution_timeout: Duration | None = None,
    max_entries: int | None = None,
    concurrency: Concurrency | None = None,
    priority: int = 0,
    start_rate: Rate | None = None,
    debounce: Debounce | None = None,
) -> _WorkflowDecorator: ...
def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    version: str | int = "1",
    events: Iterable[str] = (),
    schedule: Schedule | str | None = None,
    retry: RetryPolicy | int | None = None,
    step_timeout: Duration | None = None,
    execution_timeout: Duration | None = None,
    max_entries: int | None = None,
    concurrency: Concurrency | None = None,
    priority: int = 0,
    start_rate: Rate | None = None,
    debounce: Debounce | None = None,
) -> Any:
    """Define a workflow: bare ``@workflow`` or ``@workflow(name=..., version=2, ...)``.

    The function must be ``async def (ctx: WorkflowContext[, input])``. The name
    defaults to the function's name and the version to ``"1"``. ``retry`` and
    ``step_timeout`` are the defaults of steps that declare none;
    ``execution_timeout`` bounds a run from its start and ``max_entries`` its
    journal (both enforced by the server, which fails the run with its reason).


    ``events=["order.created"]`` starts one run per published event of those
    names, with the event's payload as input. ``schedule="0 9 * * *"`` (or a
    ``stepd.schedules.Schedule`` with a time zone, input and policies)
    starts runs on a cron schedule. A worker serving the workflow's newest
    version registers both with the server.

    ``concurrency=Concurrency(key="customer.id", limit=1)`` bounds the active
    runs per key, a value read from each run's input (see ``Concurrency``).
    ``priority`` (-1000 to 1000, default 0) is the priority of runs whose
    trigger sets none: among ready runs a higher one is handed out first.
    ``start_rate=Rate(10, per="1s", key="customer.id")`` bounds how often runs
    start per key; runs over it wait (pending) for their turn.
    ``debounce=Debounce(period="5s", key="customer.id", max_wait="1m")`` folds
    triggers of one key into one run that starts once the key was quiet for
    the period, with the latest input.
    """
    options: dict[str, Any] = {
        "retry": retry,
        "step_timeout": step_timeout,
        "execution_timeout": execution_timeout,
        "max_entries": max_entries,
        "concurrency": concurrency,
        "priority": priority,
        "start_rate": start_rate,
        "debounce": debounce,
    }
    if fn is None:
        return _WorkflowDecorator(name, version, events, schedule, options)
    return Workflow(fn, name=name, version=version, events=events, schedule=schedule, **options)
