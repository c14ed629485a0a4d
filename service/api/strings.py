"""No request string may hold a NUL character: one check at the edge for every RPC.

PostgreSQL keeps no NUL in text (it refuses the statement), SQLite would keep
one; so that both backends store and refuse the same strings, every string of
a request, at any depth, is checked before the request reaches the engine.
Error texts a worker reports from user code are not refused but cleaned
(``convert.error_from_proto``): a run's failure is recorded as it happened.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from stepd.server.engine.errors import InvalidArgument

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string field of ``message`` holding a NUL, or None."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.type == _STRING:
            values = value if field.is_repeated else (value,)
            for index, text in enumerate(values):
                if "\x00" in text:
                    return f"{name}[{index}]" if field.is_repeated else name
        elif field.type == _MESSAGE:
            if field.is_repeated:  # (the contract has no map fields)
                found = next(
                    (
                        hit
                        for index, item in enumerate(value)
                        if (hit := nul_field(item, f"{name}[{index}].")) is not None
                    ),
                    None,
                )
            else:
                found = nul_field(value, f"{name}.")
            if found is not None:
                return found
    return None


def check_strings(message: Message) -> None:
    """InvalidArgument naming the field when a string of ``message`` holds a NUL."""
    field = nul_field(message)
    if field is not None:
        raise InvalidArgument(f"{field} must not contain NUL characters")
