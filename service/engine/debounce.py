"""Debounce: checking a workflow's declaration, and saying why a run waits.

The folding itself happens in the store, in the transaction of the trigger
(``stepd.server.store.debounce``); a debounced run then waits for its start
time like a delayed start, so restarts and replicas need nothing more here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from stepd.server.domain import RunRecord, RunStatus
from stepd.server.domain_flow import MAX_RATE_PERIOD_MS, DebounceSpec
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.validation import check_name

#: Longest debounce period and maximum wait, in milliseconds (7 days).
MAX_DEBOUNCE_MS = MAX_RATE_PERIOD_MS
#: Longest key path a debounce may declare.
MAX_KEY_PATH_LENGTH = 256


def check_debounce(spec: DebounceSpec, where: str) -> DebounceSpec:
    """A workflow's debounce, checked (InvalidArgument naming ``where``)."""
    if not 1 <= spec.period_ms <= MAX_DEBOUNCE_MS:
        raise InvalidArgument(f"{where}.period must be from 1 ms to 7 days")
    if spec.max_wait_ms is not None and not spec.period_ms <= spec.max_wait_ms <= MAX_DEBOUNCE_MS:
        raise InvalidArgument(f"{where}.max_wait must be from the period to 7 days")
    check_name(f"{where}.key_path", spec.key_path, max_length=MAX_KEY_PATH_LENGTH)
    return spec


def debounce_reason(run: RunRecord, now: int) -> str:
    """Why a pending debounced run has not started ("" when it is not waiting)."""
    not_before = run.start_time_not_before
    if (
        run.debounce_key is None
        or run.status is not RunStatus.PENDING
        or not_before is None
        or not_before <= now
    ):
        return ""
    until = datetime.fromtimestamp(not_before / 1000, UTC).isoformat(timespec="milliseconds")
    return f"debounced (key {run.debounce_key!r}) until {until}"
