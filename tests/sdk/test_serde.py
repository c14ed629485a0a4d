"""JSON payloads (pydantic, dataclasses, primitives) and recorded-error rebuilding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from stepd._serde import (
    adapter_for,
    dumps,
    error_info,
    loads,
    payload_text,
    qualified_name,
    rebuild_error,
)
from stepd.errors import PayloadError, StepFailedError
from stepd.v1 import types_pb2


class Item(BaseModel):
    sku: str
    qty: int


class Cart(BaseModel):
    items: list[Item]
    placed: datetime


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Shipment:
    cart: Cart
    where: Point


class Outer:
    class NestedError(Exception):
        pass


class TwoArgError(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a, b)


CART = Cart(items=[Item(sku="a", qty=2)], placed=datetime(2024, 5, 1, 12, tzinfo=UTC))


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (Cart, CART),
        (Point, Point(1, 2)),
        (Shipment, Shipment(CART, Point(3, 4))),
        (list[Item], [Item(sku="x", qty=1)]),
        (dict[str, Point], {"a": Point(0, 0)}),
        (int, 3),
        (str, "héllo"),
        (float | None, None),
        (type(None), None),
        (tuple[int, str], (1, "a")),
    ],
)
def test_round_trip(tp: Any, value: Any) -> None:
    adapter = adapter_for(tp)
    text = dumps(value, adapter)
    json.loads(text)  # real JSON
    assert loads(text, adapter) == value


def test_adapters_are_cached() -> None:
    assert adapter_for(Cart) is adapter_for(Cart)
    assert adapter_for(list[Item]) is adapter_for(list[Item])
    assert adapter_for(Any) is adapter_for(Any)


def test_unannotated_values_become_plain_json() -> None:
    text = dumps(Shipment(CART, Point(3, 4)))
    value = loads(text)
    assert value == {
        "cart": {"items": [{"sku": "a", "qty": 2}], "placed": "2024-05-01T12:00:00Z"},
        "where": {"x": 3, "y": 4},
    }


def test_empty_payload_is_null() -> None:
    assert loads("") is None
    assert loads("", adapter_for(int | None)) is None
    assert payload_text(types_pb2.Payload()) == ""


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(PayloadError, match="encoding"):
        payload_text(types_pb2.Payload(encoding="aes", data=b"x"))


def test_dict_for_a_model_is_validated_on_the_way_back() -> None:
    adapter = adapter_for(Item)
    assert loads(dumps({"sku": "a", "qty": 1}, adapter), adapter) == Item(sku="a", qty=1)


def test_payload_errors() -> None:
    with pytest.raises(PayloadError, match="cannot serialize object"):
        dumps(object())
    with pytest.raises(PayloadError, match="does not match"):
        loads('{"sku": 1}', adapter_for(Item))


def test_qualified_names() -> None:
    assert qualified_name(ValueError) == "builtins.ValueError"
    assert qualified_name(Outer.NestedError) == f"{__name__}.Outer.NestedError"


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad value"), KeyError("k"), Outer.NestedError("nested"), PayloadError("p")],
)
def test_rebuild_same_type_and_message(exc: Exception) -> None:
    info = error_info(exc)
    rebuilt = rebuild_error(info.type, info.message)
    assert type(rebuilt) is type(exc)
    assert str(rebuilt) == info.message or isinstance(exc, KeyError)


@pytest.mark.parametrize(
    "error_type",
    [
        "no_such_module_xyz.Boom",
        f"{__name__}.NoSuchClass",
        f"{__name__}.TwoArgError",  # cannot be built from one message
        f"{__name__}.CART",  # not an exception type
        "builtins.KeyboardInterrupt",  # not an Exception
        "",
    ],
)
def test_rebuild_falls_back_to_step_failed(error_type: str) -> None:
    rebuilt = rebuild_error(error_type, "it broke")
    assert isinstance(rebuilt, StepFailedError)
    assert (rebuilt.error_type, rebuilt.error_message) == (error_type, "it broke")
    assert str(rebuilt) == f"{error_type}: it broke"


def test_error_info_fields() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        info = error_info(exc, step_key="s#2", attempt=1)
    assert info.type == "builtins.RuntimeError"
    assert info.message == "boom"
    assert "Traceback" in info.traceback and "boom" in info.traceback
    assert (info.step_key, info.attempt) == ("s#2", 1)
