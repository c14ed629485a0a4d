"""Failure policy: durations, retry policies and backoff.

Everything here is checked when a workflow or step is defined, so a wrong
policy fails at import time, not when a step first fails.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from stepd._serde import qualified_name
from stepd.errors import (
    NonRetryableError,
    StepFailedError,
    WorkflowDefinitionError,
)

Duration = float | int | str | timedelta
"""A duration: seconds as a number, a ``timedelta``, or text such as ``"500ms"``,
``"30 seconds"``, ``"10m"``, ``"1h30m"``."""

Backoff = Literal["constant", "linear", "exponential"]

_UNITS = {
    "ms": 0.001,
    "msec": 0.001,
    "msecs": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)\s*")


def parse_duration(value: object, what: str = "duration") -> float:
    """Return a duration in seconds (>= 0) or raise WorkflowDefinitionError naming ``what``.

    Accepts a number of seconds, a ``timedelta``, or text made of number-unit parts
    (``"500ms"``, ``"30 seconds"``, ``"1h 30m"``; units ms, s, m, h, d and their
    long forms).
    """
    seconds: float
    if isinstance(value, bool):
        raise WorkflowDefinitionError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise WorkflowDefinitionError(
            f"{what}: expected seconds, a timedelta or text like '30s', got {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise WorkflowDefinitionError(f"{what} must be a finite duration >= 0, got {value!r}")
    return seconds


def _parse_text(text: str, what: str) -> float:
    stripped = text.strip().lower()
    try:
        return float(stripped)  # "30" means seconds
    except ValueError:
        pass
    total, pos = 0.0, 0
    while pos < len(stripped):
        match = _PART.match(stripped, pos)
        if match is None or match.group(2) not in _UNITS:
            raise WorkflowDefinitionError(
                f"{what}: cannot read {text!r} as a duration "
                "(use e.g. '500ms', '30 seconds', '10m', '1h')"
            )
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise WorkflowDefinitionError(f"{what}: {text!r} is empty, not a duration")
    return total


def optional_duration(value: object, what: str) -> float | None:
    """``parse_duration`` for an optional, positive setting (None stays None)."""
    if value is None:
        return None
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise WorkflowDefinitionError(f"{what} must be longer than 0, got {value!r}")
    return seconds


def _type_name(entry: object, what: str) -> str:
    if isinstance(entry, type) and issubclass(entry, BaseException):
        return f"{entry.__module__}.{entry.__qualname__}"
    if isinstance(entry, str) and entry.strip():
        return entry.strip()
    raise WorkflowDefinitionError(
        f"{what}: expected exception types or their qualified names, got {entry!r}"
    )


@dataclass(frozen=True, slots=True, init=False)
class RetryPolicy:
    """How a failing step is retried.

    ``max_attempts`` counts the first attempt (1 means no retry). After failed
    attempt ``n`` the next one starts after ``delay`` (constant), ``delay * n``
    (linear) or ``delay * factor ** (n - 1)`` (exponential), capped at
    ``max_delay`` and then spread by up to ``jitter`` (a fraction, 0 to 1) either
    way. Errors of the ``non_retryable`` types (and ``NonRetryableError``) are
    never retried. The server keeps each retry's time, so a worker crash during
    the backoff changes nothing.
    """

    max_attempts: int
    delay: float
    backoff: Backoff
    factor: float
    max_delay: float | None
    jitter: float
    non_retryable: tuple[str, ...] = field(default=())

    def __init__(
        self,
        max_attempts: int = 3,
        *,
        delay: Duration = 1.0,
        backoff: Backoff = "exponential",
        factor: float = 2.0,
        max_delay: Duration | None = None,
        jitter: float = 0.0,
        non_retryable: Iterable[type[BaseException] | str] = (),
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise WorkflowDefinitionError(
                f"retry policy: max_attempts must be an int, got {max_attempts!r}"
            )
        if max_attempts < 1:
            raise WorkflowDefinitionError(
                f"retry policy: max_attempts must be at least 1 (the first attempt), "
                f"got {max_attempts}"
            )
        if backoff not in ("constant", "linear", "exponential"):
            raise WorkflowDefinitionError(
                f"retry policy: backoff must be 'constant', 'linear' or 'exponential', "
                f"got {backoff!r}"
            )
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise WorkflowDefinitionError(f"retry policy: factor must be a number, got {factor!r}")
        if not math.isfinite(factor) or factor < 1:
            raise WorkflowDefinitionError(f"retry policy: factor must be >= 1, got {factor!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise WorkflowDefinitionError(
                f"retry policy: jitter must be a fraction from 0 to 1, got {jitter!r}"
            )
        if isinstance(non_retryable, (str, type)):
            non_retryable = (non_retryable,)
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "delay", parse_duration(delay, "retry policy: delay"))
        object.__setattr__(self, "backoff", backoff)
        object.__setattr__(self, "factor", float(factor))
        object.__setattr__(
            self,
            "max_delay",
            None if max_delay is None else parse_duration(max_delay, "retry policy: max_delay"),
        )
        object.__setattr__(self, "jitter", float(jitter))
        object.__setattr__(
            self,
            "non_retryable",
            tuple(_type_name(e, "retry policy: non_retryable") for e in non_retryable),
        )

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether a failed ``attempt`` that raised ``error`` is followed by another."""
        return attempt < self.max_attempts and self.retryable(error)

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried at all: not a ``NonRetryableError`` and not
        of (a subclass of) a ``non_retryable`` type. A recorded error whose type could
        not be rebuilt is judged by its type name."""
        names = {qualified_name(cls) for cls in type(error).__mro__}
        if isinstance(error, StepFailedError) and type(error) is StepFailedError:
            names.add(error.error_type)
        return _NON_RETRYABLE not in names and names.isdisjoint(self.non_retryable)

    def delay_after(self, attempt: int, seed: str = "") -> float:
        """Seconds between the end of failed ``attempt`` and the next one.

        The jitter is derived from ``seed`` (run, step and attempt), so a replay
        computes the same delay."""
        if self.backoff == "constant":
            base = self.delay
        elif self.backoff == "linear":
            base = self.delay * attempt
        else:
            exponent = min(attempt - 1, 1000)
            try:
                base = self.delay * self.factor**exponent
            except OverflowError:
                base = math.inf
        if self.max_delay is not None:
            base = min(base, self.max_delay)
        base = min(base, MAX_RETRY_DELAY)
        if self.jitter and base:
            digest = hashlib.sha256(f"{seed}:{attempt}".encode()).digest()
            unit = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
            base *= 1 + self.jitter * (2 * unit - 1)
        return base


MAX_RETRY_DELAY = 365 * 86400.0
"""No backoff grows past a year, whatever the factor."""

NO_RETRY = RetryPolicy(1)
"""The policy of a step (and workflow) that declares none: one attempt."""

_NON_RETRYABLE = qualified_name(NonRetryableError)


def retry_policy(value: object, what: str) -> RetryPolicy | None:
    """Check a ``retry=`` option: a RetryPolicy, an int (max attempts) or None."""
    if value is None or isinstance(value, RetryPolicy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return RetryPolicy(value)
    raise WorkflowDefinitionError(
        f"{what}: retry must be a RetryPolicy or a number of attempts, got {value!r}"
    )


def max_entries(value: object, what: str) -> int | None:
    """Check a ``max_entries=`` option: a positive int or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkflowDefinitionError(f"{what}: max_entries must be an int >= 1, got {value!r}")
    return value
