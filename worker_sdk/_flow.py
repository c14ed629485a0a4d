"""Flow-control options besides ``Concurrency``: priorities (checked here)."""

from __future__ import annotations

from stepd.errors import WorkflowDefinitionError

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
