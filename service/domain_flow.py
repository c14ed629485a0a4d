"""Flow-control settings a workflow declares besides its concurrency limit:
its default priority, its start rate limit and its debounce.

Stored per workflow as one JSON object (``workflow_flow.settings_json``);
``FlowSettings.to_json`` / ``from_json`` are the only places that know its
shape. A workflow that declares nothing has no row.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

#: Priorities run from MIN_PRIORITY to MAX_PRIORITY; 0 is the default.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000
#: The most turns per period a rate limit allows.
MAX_RATE_LIMIT = 10_000
#: The longest period of a rate limit, in milliseconds (7 days).
MAX_RATE_PERIOD_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class RateSpec:
    """At most ``limit`` turns per ``period_ms`` per key; the key of a run is
    read at ``key_path`` in its input. Shared by name."""

    name: str
    key_path: str
    limit: int
    period_ms: int


@dataclass(frozen=True, slots=True)
class DebounceSpec:
    """Triggers with the same key (read at ``key_path``) fold into one run that
    starts ``period_ms`` after the last of them, but at most ``max_wait_ms``
    (None: no bound) after the first."""

    key_path: str
    period_ms: int
    max_wait_ms: int | None = None

    def start_time(self, now: int, first: int) -> int:
        """When a run first triggered at ``first`` starts after a trigger at ``now``."""
        start = now + self.period_ms
        if self.max_wait_ms is not None:
            start = min(start, first + self.max_wait_ms)
        return start


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """What a workflow declares for flow control (the defaults: nothing)."""

    # The priority of a run whose trigger sets none.
    priority: int = 0
    # How often runs may start (None: no limit).
    start_rate: RateSpec | None = None
    # Triggers of one key fold into one run (None: no debounce).
    debounce: DebounceSpec | None = None

    @property
    def empty(self) -> bool:
        """True when the workflow declares nothing (no row is stored)."""
        return self == FlowSettings()

    def to_json(self) -> str:
        """The settings as stored."""
        document: dict[str, Any] = {}
        if self.priority:
            document["priority"] = self.priority
        if self.start_rate is not None:
            rate = self.start_rate
            document["start_rate"] = [rate.name, rate.key_path, rate.limit, rate.period_ms]
        if self.debounce is not None:
            debounce = self.debounce
            document["debounce"] = [debounce.key_path, debounce.period_ms, debounce.max_wait_ms]
        return json.dumps(document, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FlowSettings:
        """The settings stored as ``text`` (unknown fields are ignored)."""
        document = json.loads(text)
        rate = document.get("start_rate")
        debounce = document.get("debounce")
        return cls(
            priority=int(document.get("priority", 0)),
            start_rate=RateSpec(rate[0], rate[1], int(rate[2]), int(rate[3])) if rate else None,
            debounce=DebounceSpec(debounce[0], int(debounce[1]), debounce[2]) if debounce else None,
        )


class FlowLimitKind(enum.StrEnum):
    """What a flow-control limit bounds."""

    CONCURRENCY = "concurrency"
    START_RATE = "start_rate"
    STEP_RATE = "step_rate"
    DEBOUNCE = "debounce"


@dataclass(frozen=True, slots=True)
class FlowLimitState:
    """One flow-control limit and what waits under it, for operators."""

    kind: FlowLimitKind
    name: str
    workflows: tuple[str, ...]
    setting: str
    active_runs: int = 0
    waiting: int = 0
    keys_waiting: int = 0
