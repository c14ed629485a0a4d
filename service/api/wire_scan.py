"""Checking a PollTask message's size and repeated fields from its bytes, before
decoding it.

Decoding a message of a million tiny commands (or a hello of a million
workflows or event names) takes the event loop for seconds. The counts that
are limited (commands per batch, workflows per hello, event triggers per
workflow) and the message's size are checked here first, on the wire format:
the scan steps over each field by its length and stops as soon as a count
passes its limit, so it costs at most about that many steps whatever the
message holds.
"""

from __future__ import annotations

from collections.abc import Callable

from stepd.server.engine.errors import EngineError, InvalidArgument, ResourceExhausted
from stepd.server.engine.validation import (
    MAX_BATCH_COMMANDS,
    MAX_EVENT_TRIGGERS,
    MAX_HELLO_BYTES,
    MAX_HELLO_WORKFLOWS,
)

#: Fields a message may carry besides its limited repeated field (its other
#: fields, fields added to the contract later).
_SLACK = 32
# Field numbers (proto/stepd/v1/worker_service.proto).
_HELLO, _COMMANDS = 1, 2
_HELLO_WORKFLOWS = 3
_BATCH_COMMANDS = 1
_EVENT_TRIGGERS = 10
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
#: The first byte of every event_triggers field (number 10, length-delimited).
_TRIGGER_TAG = bytes([_EVENT_TRIGGERS << 3 | _LENGTH])


class _Malformed(Exception):
    """The bytes are not a protobuf message (decoding reports that)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int, most: int) -> list[tuple[int, int, int]]:
    """The fields in ``data[start:end]`` as (number, start, end) of their length-
    delimited value (start == end == -1 for other wire types); _TooMany past ``most``."""
    found: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        if len(found) >= most:
            raise _TooMany
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(data, pos)
            found.append((number, -1, -1))
        elif wire == _LENGTH:
            length, pos = _varint(data, pos)
            found.append((number, pos, pos + length))
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            found.append((number, -1, -1))
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed
    return found


class _TooMany(Exception):
    """A message holds more fields than the scan allows."""


def poll_request_check(max_message_bytes: int) -> Callable[[bytes], EngineError | None]:
    """The check of a PollTaskRequest's bytes, for messages after the hello of at
    most ``max_message_bytes``."""

    def check(raw: bytes) -> EngineError | None:
        return check_poll_request(raw, max_message_bytes)

    return check


def check_poll_request(raw: bytes, max_message_bytes: int) -> EngineError | None:
    """The error for a PollTaskRequest too large, or whose limited counts pass
    their limits (None when they do not, or when the bytes do not decode anyway)."""
    size = len(raw)
    if size > MAX_HELLO_BYTES:
        return ResourceExhausted(f"a PollTask message is {size} bytes; at most {MAX_HELLO_BYTES}")
    try:
        top = _fields(raw, 0, len(raw), _SLACK)
    except _TooMany:
        return InvalidArgument("a PollTask message carries one hello, batch, heartbeat or drain")
    except _Malformed:
        return None
    if size > max_message_bytes and any(number != _HELLO for number, _, _ in top):
        return ResourceExhausted(
            f"a PollTask message is {size} bytes; at most {max_message_bytes} (a hello: "
            f"{MAX_HELLO_BYTES})"
        )
    try:
        commands = 0
        for number, start, end in top:
            if number == _COMMANDS and start >= 0:
                commands += len(_fields(raw, start, end, MAX_BATCH_COMMANDS - commands))
            elif number == _HELLO and start >= 0:
                _check_hello(raw, start, end)
    except _TooMany:
        return ResourceExhausted(
            f"a command batch carries at most {MAX_BATCH_COMMANDS} commands; "
            "send more in several batches"
        )
    except _HelloTooLarge as exc:
        return exc.error
    except _Malformed:
        return None
    return None


class _HelloTooLarge(Exception):
    def __init__(self, error: EngineError) -> None:
        self.error = error


def _check_hello(raw: bytes, start: int, end: int) -> None:
    try:
        fields = _fields(raw, start, end, MAX_HELLO_WORKFLOWS + _SLACK)
    except _TooMany:
        fields = []
        workflows = MAX_HELLO_WORKFLOWS + 1
    else:
        workflows = sum(1 for number, _, _ in fields if number == _HELLO_WORKFLOWS)
    if workflows > MAX_HELLO_WORKFLOWS:
        raise _HelloTooLarge(
            ResourceExhausted(
                f"a hello registers at most {MAX_HELLO_WORKFLOWS} workflow versions; "
                "split the workflows across workers"
            )
        )
    index = -1
    for number, begin, finish in fields:
        if number != _HELLO_WORKFLOWS or begin < 0:
            continue
        index += 1
        if raw.count(_TRIGGER_TAG, begin, finish) <= MAX_EVENT_TRIGGERS:
            continue  # each event trigger starts with this byte: there are not too many
        try:
            _fields(raw, begin, finish, MAX_EVENT_TRIGGERS + _SLACK)
        except _TooMany:
            raise _HelloTooLarge(
                ResourceExhausted(
                    f"hello.workflows[{index}] has more than {MAX_EVENT_TRIGGERS} "
                    "event triggers or fields"
                )
            ) from None
