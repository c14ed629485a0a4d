"""Checks on JSON payloads arriving from clients and workers."""

from __future__ import annotations

import json

from stepd.server.engine.errors import InvalidArgument, ResourceExhausted

JSON_NULL = "null"


def check_json_payload(field: str, json_text: str, encoding: str, limit: int) -> str:
    """Return the payload's JSON text (``null`` when empty) after checking it.

    Raises InvalidArgument for an unknown encoding or malformed JSON and
    ResourceExhausted when the payload is larger than ``limit`` bytes.
    """
    if encoding and encoding != "json":
        raise InvalidArgument(
            f"{field}.encoding {encoding!r} is not supported; send JSON in {field}.json"
        )
    if not json_text:
        return JSON_NULL
    size = len(json_text.encode())
    if size > limit:
        raise ResourceExhausted(
            f"{field} is {size} bytes; the limit is {limit} bytes. Store large data "
            "elsewhere and pass a reference."
        )
    try:
        json.loads(json_text)
    except ValueError as exc:
        raise InvalidArgument(f"{field}.json is not valid JSON: {exc}") from None
    return json_text
