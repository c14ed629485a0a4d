"""Checks on JSON payloads arriving from clients and workers.

A payload is one JSON document (RFC 8259; ``NaN`` and ``Infinity`` are not
JSON) whose arrays and objects nest at most ``MAX_JSON_DEPTH`` deep. A
payload is parsed once, by the C scanner of ``json``, which stops a deeper
document at the interpreter's recursion limit instead of overflowing the
stack. The depth of the parsed value is then walked without recursion, and
only when the text has more opening brackets than the limit (found with
``str.find``, which stops at the limit): a usual payload costs no walk.
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

from stepd.server.engine.errors import InvalidArgument, ResourceExhausted

JSON_NULL = "null"
#: How deep arrays and objects may nest in a payload.
MAX_JSON_DEPTH = 64


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_constant)


def _more_brackets_than(text: str, limit: int) -> bool:
    """Whether ``text`` has more than ``limit`` opening brackets (stops early)."""
    found = 0
    for bracket in "[{":
        at = text.find(bracket)
        while at != -1:
            found += 1
            if found > limit:
                return True
            at = text.find(bracket, at + 1)
    return False


def _deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` deep in a parsed value
    (walked level by level, not recursively; the iteration runs in C)."""
    level: list[Any] = [value] if type(value) is list or type(value) is dict else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        objects = [node for node in level if type(node) is dict]
        arrays = [node for node in level if type(node) is list]
        items = chain(chain.from_iterable(map(dict.values, objects)), chain.from_iterable(arrays))
        level = [item for item in items if type(item) is list or type(item) is dict]
    return False


def parse_json(field: str, text: str, max_depth: int = MAX_JSON_DEPTH) -> object:
    """Parse a JSON document; InvalidArgument naming ``field`` when it is not
    JSON (NaN and Infinity included) or nests deeper than ``max_depth``."""
    try:
        value = _decoder.decode(text)
    except RecursionError:
        value, deep = None, True
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {str(exc)[:200]}") from None
    else:
        deep = _more_brackets_than(text, max_depth) and _deeper_than(value, max_depth)
    if deep:
        raise InvalidArgument(
            f"{field} nests arrays and objects more than {max_depth} deep; "
            f"at most {max_depth} levels are accepted"
        )
    return value


def check_json_payload(field: str, json_text: str, encoding: str, limit: int) -> str:
    """Return the payload's JSON text (``null`` when empty) after checking it.

    Raises InvalidArgument for an unknown encoding, malformed or too deeply
    nested JSON, and ResourceExhausted when the payload is larger than
    ``limit`` bytes.
    """
    if encoding and encoding != "json":
        shown = repr(encoding[:40])
        raise InvalidArgument(
            f"{field}.encoding {shown} is not supported; send JSON in {field}.json"
        )
    if not json_text:
        return JSON_NULL
    size = len(json_text) if json_text.isascii() else len(json_text.encode())
    if size > limit:
        raise ResourceExhausted(
            f"{field} is {size} bytes; the limit is {limit} bytes. Store large data "
            "elsewhere and pass a reference."
        )
    parse_json(f"{field}.json", json_text)
    return json_text
