"""Hypothesis strategies for any stepd.v1 message, valid-shaped or malformed.

Built from the message descriptors, so a field added to the contract is
fuzzed without changes here. Strings lean on the values that broke servers
before (empty, over the length limits, NUL, path tricks), JSON fields on
payloads that are not JSON or nest too deep, times and durations on values
out of range, integers on the edges of their width.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}

NAMES = st.one_of(
    st.sampled_from(
        [
            "",
            "w",
            "fuzz.w",
            "1",
            "e2e.square",
            "x" * 200,
            "x" * 201,
            "y" * 5000,
            "\x00",
            "a\x00b",
            "../../etc/passwd",
            "Europe/Paris",
            "UTC",
            "* * * * *",
            "@hourly",
            "0 0 0 1 1 * 2020",
            "0 0 0 1 1 * 2027",
            "* * * * * *",
            "stepd:event:x",
            "h1.abc.def.ghi",
            "ü✓ 漢字",
        ]
    ),
    st.text(max_size=24),
)

JSON_TEXTS = st.one_of(
    st.sampled_from(
        [
            "",
            "null",
            "1",
            '{"a": 1}',
            "[1, 2.5, true]",
            "[",
            "NaN",
            "[Infinity]",
            "-Infinity",
            "1e999",
            "9" * 5000,
            '"\\u0000"',
            "\x00",
            '"\\ud800"',
            "[" * 64 + "]" * 64,
            "[" * 65 + "]" * 65,
            "[" * 5000 + "]" * 5000,
            '{"a":' * 200 + "1" + "}" * 200,
            '"' + "x" * 3000 + '"',
        ]
    ),
    st.text(max_size=24),
)

SECONDS = st.one_of(
    st.sampled_from(
        [0, 1, -1, 1_800_000_000, 253_402_300_799, 253_402_300_800, -62_135_596_801, 2**62]
    ),
    st.integers(-(2**63), 2**63 - 1),
)
NANOS = st.one_of(
    st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1]), st.integers(-(2**31), 2**31 - 1)
)


def _repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6.32
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)  # type: ignore[attr-defined]


def _int_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES.get(field.type, (-(2**31), 2**31 - 1))
    edges = [v for v in (0, 1, 2, -1, 2**31 - 1, 2**31, 2**63 - 1, high, low) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return JSON_TEXTS if "json" in field.name else NAMES
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=40)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return messages(field.message_type, depth + 1)
    return _int_values(field)


def _fill(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if _repeated(field):
            getattr(message, field.name).add().CopyFrom(value)
        else:
            getattr(message, field.name).CopyFrom(value)
    elif _repeated(field):
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Message:
    message_class = message_factory.GetMessageClass(descriptor)
    message = message_class()
    if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        message.seconds = draw(SECONDS)  # type: ignore[attr-defined]
        message.nanos = draw(NANOS)  # type: ignore[attr-defined]
        return message
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in descriptor.oneofs
    }
    for field in descriptor.fields:
        if field.containing_oneof is not None:
            if chosen_oneofs[field.containing_oneof.name] is not field:
                continue
        elif not draw(st.booleans()):
            continue  # leave it unset
        if depth > 4 and field.type == FieldDescriptor.TYPE_MESSAGE:
            continue
        strategy = _scalar(field, depth)
        count = draw(st.integers(0, 3)) if _repeated(field) else 1
        for _ in range(count):
            _fill(message, field, draw(strategy))
    return message


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type, every field set or not at random."""
    return _message(descriptor, depth)
