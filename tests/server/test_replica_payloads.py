"""Replica notifications: many items share a payload, none exceeds PostgreSQL's limit."""

import json

from stepd.server.engine.replicas import _payloads
from stepd.server.store.notify import MAX_PAYLOAD_BYTES


def test_items_are_packed_into_payloads_under_the_limit() -> None:
    items = [["r", "orders.process", "v1", f"run-{n:05d}-" + "x" * 40, 0] for n in range(1000)]
    payloads = _payloads("abc", items)

    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    decoded = [json.loads(p) for p in payloads]
    assert all(message["from"] == "abc" for message in decoded)
    assert [item for message in decoded for item in message["items"]] == items


def test_one_item_is_one_payload() -> None:
    assert [json.loads(p) for p in _payloads("abc", [["e", "run-1"]])] == [
        {"from": "abc", "items": [["e", "run-1"]]}
    ]
