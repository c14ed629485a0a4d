"""Flow-control settings a workflow declares besides its concurrency limit:
its default priority (and, in later sections, its start rate and debounce).

Stored per workflow as one JSON object (``workflow_flow.settings_json``);
``FlowSettings.to_json`` / ``from_json`` are the only places that know its
shape. A workflow that declares nothing has no row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Priorities run from MIN_PRIORITY to MAX_PRIORITY; 0 is the default.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """What a workflow declares for flow control (the defaults: nothing)."""

    # The priority of a run whose trigger sets none.
    priority: int = 0

    @property
    def empty(self) -> bool:
        """True when the workflow declares nothing (no row is stored)."""
        return self == FlowSettings()

    def to_json(self) -> str:
        """The settings as stored."""
        document: dict[str, Any] = {}
        if self.priority:
            document["priority"] = self.priority
        return json.dumps(document, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FlowSettings:
        """The settings stored as ``text`` (unknown fields are ignored)."""
        document = json.loads(text)
        return cls(priority=int(document.get("priority", 0)))
