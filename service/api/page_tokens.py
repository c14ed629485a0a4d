"""Opaque page tokens: a cursor bound to the request that made it.

ListRuns tokens carry the last run's seq and a fingerprint of the filters;
ListRunEvents tokens carry the history cursor (entries so far, the last row
read from each table) and a fingerprint of the run id. A token sent with
other filters, or tampered with, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import hashlib

from stepd.server.domain import HistoryCursor, RunFilter
from stepd.server.engine.errors import InvalidArgument

#: Cursors are database integers (64-bit).
_MAX_CURSOR = 2**63 - 1


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _filter_fingerprint(run_filter: RunFilter) -> str:
    statuses = ",".join(sorted(s.value for s in run_filter.statuses or ()))
    parts: tuple[object, ...] = (
        run_filter.workflow_name,
        statuses,
        run_filter.parent_run_id,
        run_filter.create_time_after,
        run_filter.create_time_before,
    )
    if run_filter.idempotency_key is not None or run_filter.schedule_id is not None:
        parts += (run_filter.idempotency_key, run_filter.schedule_id)
    return _fingerprint("|".join(str(part) for part in parts))


def _pack(kind: str, value: int, fingerprint: str) -> str:
    raw = f"{kind}:{value}:{fingerprint}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unpack(token: str, kind: str, fingerprint: str, mismatch: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        found_kind, value, found_fingerprint = raw.split(":")
        cursor = int(value)
    except ValueError:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged") from None
    if found_kind != kind or not 0 <= cursor <= _MAX_CURSOR or found_fingerprint != fingerprint:
        raise InvalidArgument(mismatch)
    return cursor


def encode(before_seq: int, run_filter: RunFilter) -> str:
    """A ListRuns token for the page of runs older than ``before_seq``."""
    return _pack("v1", before_seq, _filter_fingerprint(run_filter))


def decode(token: str, run_filter: RunFilter) -> int | None:
    """The cursor in a ListRuns token (None for an empty token)."""
    if not token:
        return None
    return _unpack(
        token,
        "v1",
        _filter_fingerprint(run_filter),
        "page_token was made for different filters; send the same filters with it",
    )


def encode_history(cursor: HistoryCursor, run_id: str) -> str:
    """A ListRunEvents token for the page after ``cursor``."""
    flags = int(cursor.triggered) | int(cursor.ended) << 1
    fields = (cursor.position, cursor.events, cursor.steps, cursor.attempts, flags)
    raw = f"h1:{'.'.join(map(str, fields))}:{_fingerprint(run_id)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_history(token: str, run_id: str) -> HistoryCursor:
    """The cursor in a ListRunEvents token (the start for an empty token)."""
    if not token:
        return HistoryCursor()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, values, fingerprint = raw.split(":")
        position, events, steps, attempts, flags = (int(v) for v in values.split("."))
    except ValueError:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged") from None
    numbers = (position, events, steps, attempts)
    if kind != "h1" or min(*numbers, flags) < 0 or max(numbers) > _MAX_CURSOR or flags > 3:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged")
    if fingerprint != _fingerprint(run_id):
        raise InvalidArgument("page_token was made for another run; send the same run_id")
    return HistoryCursor(position, events, steps, attempts, bool(flags & 1), bool(flags & 2))
