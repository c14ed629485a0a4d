"""How commands print: JSON documents for scripts, tables and fields for people.

JSON follows the proto field names; enum values lose their prefix and are
lower case (``"completed"``), payloads are their JSON value, times are RFC 3339
in UTC, and fields that are not set (and empty payloads, as listings leave
them) are left out.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from stepd.server.ops_cli.command import EXIT_USAGE, CommandError
from stepd.v1 import types_pb2

#: How much of a payload a table cell shows.
CELL_WIDTH = 40


def to_json(message: Message) -> dict[str, Any]:
    """A message as a JSON object (see the module docstring)."""
    return {
        field.name: _field(field, value)
        for field, value in message.ListFields()
        if not (isinstance(value, types_pb2.Payload) and not value.json and not value.encoding)
    }


def _field(field: FieldDescriptor, value: Any) -> Any:
    if not isinstance(value, (str, bytes, Message)) and hasattr(value, "__len__"):
        return [_value(field, item) for item in value]  # a repeated field
    return _value(field, value)


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            return value.ToJsonString()
        if name == "stepd.v1.Payload":
            return payload_value(value)
        return to_json(value)
    if field.enum_type is not None:
        return enum_name(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def enum_name(enum: EnumDescriptor, number: int) -> str:
    """An enum value without its prefix, lower case: RUN_STATUS_COMPLETED -> completed."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return value.name.removeprefix(prefix).lower()


def payload_value(payload: types_pb2.Payload) -> Any:
    """A payload's JSON value (an encoded payload as {"encoding", "data"})."""
    if payload.encoding:
        return {"encoding": payload.encoding, "data": base64.b64encode(payload.data).decode()}
    return json.loads(payload.json) if payload.json else None


def payload_text(payload: types_pb2.Payload, width: int | None = None) -> str:
    """A payload as compact JSON text, cut to ``width`` characters."""
    text = json.dumps(payload_value(payload), separators=(",", ":"), ensure_ascii=False)
    if width is not None and len(text) > width:
        return text[: width - 3] + "..."
    return text


def parse_json(text: str, flag: str) -> str:
    """A JSON argument checked and returned as text; a usage error names the flag."""
    try:
        json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{flag} is not JSON: {exc}", EXIT_USAGE) from None
    return text


def when(timestamp: Timestamp, *, set_: bool = True) -> str:
    """A time as 2026-12-06T20:43:30Z, or "-" when not set."""
    if not set_ or (timestamp.seconds == 0 and timestamp.nanos == 0):
        return "-"
    return timestamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows in aligned columns under their headers."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def print_json(document: Any, *, line: bool = False) -> None:
    """Print one JSON document (indented), or one JSON line (``line``)."""
    if line:
        print(json.dumps(document, separators=(",", ":"), ensure_ascii=False), flush=True)
    else:
        print(json.dumps(document, indent=2, ensure_ascii=False))


def note(text: str) -> None:
    """A message for people on stderr (stdout stays what scripts read)."""
    print(text, file=sys.stderr)
