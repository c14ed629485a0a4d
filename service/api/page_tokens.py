"""Opaque page tokens: a cursor bound to the request that made it.

ListRuns tokens carry the last run's seq and a fingerprint of the filters;
ListRunEvents tokens carry an offset into the (append-only) history and a
fingerprint of the run id. A token sent with other filters, or tampered with,
is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import hashlib

from stepd.server.domain import RunFilter
from stepd.server.engine.errors import InvalidArgument


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _filter_fingerprint(run_filter: RunFilter) -> str:
    statuses = ",".join(sorted(s.value for s in run_filter.statuses or ()))
    parts = (
        run_filter.workflow_name,
        statuses,
        run_filter.parent_run_id,
        run_filter.create_time_after,
        run_filter.create_time_before,
    )
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
    if found_kind != kind or cursor < 0 or found_fingerprint != fingerprint:
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


def encode_offset(offset: int, scope: str) -> str:
    """A token for the page of an append-only list starting at ``offset``."""
    return _pack("o1", offset, _fingerprint(scope))


def decode_offset(token: str, scope: str) -> int:
    """The offset in an offset token (0 for an empty token)."""
    if not token:
        return 0
    return _unpack(
        token,
        "o1",
        _fingerprint(scope),
        "page_token was made for another run; send the same run_id",
    )
