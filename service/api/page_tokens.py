"""Opaque ListRuns page tokens: a cursor bound to the filters that made it."""

from __future__ import annotations

import base64
import hashlib

from service.domain import RunFilter
from service.engine.errors import InvalidArgument


def _fingerprint(run_filter: RunFilter) -> str:
    statuses = ",".join(sorted(s.value for s in run_filter.statuses or ()))
    text = "|".join(
        str(part)
        for part in (
            run_filter.workflow_name,
            statuses,
            run_filter.parent_run_id,
            run_filter.create_time_after,
            run_filter.create_time_before,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode(before_seq: int, run_filter: RunFilter) -> str:
    """A token for the page of runs older than ``before_seq``."""
    raw = f"v1:{before_seq}:{_fingerprint(run_filter)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, run_filter: RunFilter) -> int | None:
    """The cursor in ``token`` (None for an empty token).

    Raises InvalidArgument when the token is malformed or was made for other filters.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, seq, fingerprint = raw.split(":")
        cursor = int(seq)
    except ValueError:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged") from None
    if version != "v1" or fingerprint != _fingerprint(run_filter):
        raise InvalidArgument(
            "page_token was made for different filters; send the same filters with it"
        )
    return cursor


def encode_offset(offset: int, scope: str) -> str:
    """A token for the page of an append-only list starting at ``offset``."""
    digest = hashlib.sha256(scope.encode()).hexdigest()[:16]
    raw = f"o1:{offset}:{digest}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_offset(token: str, scope: str) -> int:
    """The offset in ``token`` (0 for an empty token); InvalidArgument when malformed
    or made for another list."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, offset, digest = raw.split(":")
        value = int(offset)
    except ValueError:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged") from None
    if version != "o1" or value < 0 or digest != hashlib.sha256(scope.encode()).hexdigest()[:16]:
        raise InvalidArgument("page_token was made for another run; send the same run_id")
    return value
