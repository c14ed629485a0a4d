"""Flow-control options besides ``Concurrency``: priorities, ``Rate`` and ``Debounce``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepd._policy import Duration, parse_duration
from stepd.errors import WorkflowDefinitionError
from stepd.v1 import worker_service_pb2

#: Priorities run from MIN_PRIORITY to MAX_PRIORITY; 0 is the default.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000


def is_priority(value: object) -> bool:
    """True for an int from MIN_PRIORITY to MAX_PRIORITY."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and MIN_PRIORITY <= value <= MAX_PRIORITY
    )


def check_priority(value: object, what: str) -> int:
    """A workflow's ``priority=`` option, checked."""
    if not is_priority(value):
        raise WorkflowDefinitionError(
            f"{what}: priority must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, got {value!r}"
        )
    assert isinstance(value, int)
    return value


#: The most turns per period a Rate allows.
MAX_RATE_LIMIT = 10_000
#: The longest period of a Rate, in seconds (7 days).
MAX_RATE_PERIOD = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` turns per ``per`` (a duration: seconds, ``"1m"``, a
    ``timedelta``) per key, across every worker and server replica: in no span
    of ``per`` do more than ``limit`` turns of one key begin. Work over the
    limit waits for its turn; it is never dropped.

    On ``@workflow(start_rate=...)`` a turn is a run start and ``key`` is a
    dotted path into the run's JSON input (as ``Concurrency.key``; "" gives
    every run one key). On ``@step(rate=...)`` a turn is a step attempt and
    ``key`` is a fixed string or a function of the step's arguments that
    returns one. ``name`` (default: the workflow's or step's name) lets
    several workflows and steps share one limit.
    """

    limit: int
    per: Duration = 1.0
    key: str | Callable[..., str] = ""
    name: str | None = None

    @property
    def period_ms(self) -> int:
        """The period in whole milliseconds (at least 1)."""
        return max(1, math.ceil(parse_duration(self.per, "rate: per") * 1000))

    def check(self, what: str, *, key_path: bool) -> None:
        """Raise WorkflowDefinitionError naming ``what`` when a setting is wrong
        (``key_path``: the key must be a path, not a function)."""
        if (
            isinstance(self.limit, bool)
            or not isinstance(self.limit, int)
            or not 1 <= self.limit <= MAX_RATE_LIMIT
        ):
            raise WorkflowDefinitionError(
                f"{what}: rate limit must be an int from 1 to {MAX_RATE_LIMIT}, got {self.limit!r}"
            )
        seconds = parse_duration(self.per, f"{what}: rate per")
        if not 0 < seconds <= MAX_RATE_PERIOD:
            raise WorkflowDefinitionError(f"{what}: rate per must be from 1 ms to 7 days")
        if key_path and not isinstance(self.key, str):
            raise WorkflowDefinitionError(f"{what}: a start rate's key must be a str path")
        if not isinstance(self.key, str) and not callable(self.key):
            raise WorkflowDefinitionError(f"{what}: rate key must be a str or a function")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise WorkflowDefinitionError(f"{what}: rate name must be a non-empty str")

    def key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """A step's key: the fixed one, or the key function's answer for its arguments."""
        if isinstance(self.key, str):
            return self.key
        return str(self.key(*args, **kwargs))

    def to_proto(self, default_name: str) -> worker_service_pb2.RateLimit:
        """A workflow's start rate as the worker's hello declares it."""
        limit = worker_service_pb2.RateLimit(
            name=self.name or default_name,
            key_path=self.key if isinstance(self.key, str) else "",
            limit=self.limit,
        )
        limit.period.FromMilliseconds(self.period_ms)
        return limit


def check_rate(value: object, what: str, *, key_path: bool) -> Rate | None:
    """A ``rate=`` / ``start_rate=`` option, checked."""
    if value is None:
        return None
    if not isinstance(value, Rate):
        raise WorkflowDefinitionError(f"{what}: a rate must be a stepd.Rate")
    value.check(what, key_path=key_path)
    return value


@dataclass(frozen=True, slots=True)
class Debounce:
    """Triggers with the same key within ``period`` fold into one run, which
    starts once ``period`` passed without a new trigger, with the latest
    trigger's input; ``max_wait`` (None: no bound) bounds how long a busy key
    can postpone it after its first trigger.

    ``key`` is a dotted path into the trigger's JSON input (as
    ``Concurrency.key``; "" gives every trigger one key);
    ``Client.trigger(..., debounce_key=...)`` sets a trigger's key explicitly.
    """

    period: Duration
    key: str = ""
    max_wait: Duration | None = None

    def check(self, what: str) -> None:
        """Raise WorkflowDefinitionError naming ``what`` when a setting is wrong."""
        period = parse_duration(self.period, f"{what}: debounce period")
        if not 0 < period <= MAX_RATE_PERIOD:
            raise WorkflowDefinitionError(f"{what}: debounce period must be from 1 ms to 7 days")
        if self.max_wait is not None:
            max_wait = parse_duration(self.max_wait, f"{what}: debounce max_wait")
            if not period <= max_wait <= MAX_RATE_PERIOD:
                raise WorkflowDefinitionError(
                    f"{what}: debounce max_wait must be from the period to 7 days"
                )
        if not isinstance(self.key, str):
            raise WorkflowDefinitionError(f"{what}: debounce key must be a str path")

    def to_proto(self) -> worker_service_pb2.Debounce:
        """The debounce as the worker's hello declares it."""
        debounce = worker_service_pb2.Debounce(key_path=self.key)
        debounce.period.FromMilliseconds(_ms(self.period))
        if self.max_wait is not None:
            debounce.max_wait.FromMilliseconds(_ms(self.max_wait))
        return debounce


def _ms(value: Duration) -> int:
    return max(1, math.ceil(parse_duration(value) * 1000))


def check_debounce(value: object, what: str) -> Debounce | None:
    """A workflow's ``debounce=`` option, checked."""
    if value is None:
        return None
    if not isinstance(value, Debounce):
        raise WorkflowDefinitionError(f"{what}: debounce must be a stepd.Debounce")
    value.check(what)
    return value
