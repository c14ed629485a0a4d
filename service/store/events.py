"""Published events, and matching them against event waits."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Connection, select

from stepd.server.store.dialects import insert_for
from stepd.server.store.schema import events


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One published event."""

    sequence: int
    payload_json: str
    # The API key that published it, if any.
    actor: str | None = None


def matches(match_json: str | None, payload_json: str) -> bool:
    """Whether every field of the match object is in the payload with an equal value."""
    match = json.loads(match_json) if match_json else {}
    if not match:
        return True
    payload = json.loads(payload_json)
    if not isinstance(payload, dict):
        return False
    return all(key in payload and json_equal(payload[key], value) for key, value in match.items())


def json_equal(left: object, right: object) -> bool:
    """JSON equality: true and 1 differ (Python's == says they are equal)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, (dict, list)) or isinstance(right, (dict, list)):
        return False
    return left == right


def insert(
    conn: Connection, event_id: str, name: str, payload_json: str, now: int, actor: str = ""
) -> bool:
    """Store an event; False when its id was published before."""
    insert = insert_for(conn.dialect.name)
    stored = conn.execute(
        insert(events)
        .values(
            event_id=event_id,
            name=name,
            payload_json=payload_json,
            publish_time=now,
            actor=actor or None,
        )
        .on_conflict_do_nothing()
        .returning(events.c.sequence)
    ).first()
    return stored is not None


def first_match(
    conn: Connection, name: str, since: int, match_json: str | None
) -> StoredEvent | None:
    """The first event of ``name`` published at or after ``since`` that matches."""
    stmt = (
        select(events.c.sequence, events.c.payload_json, events.c.actor)
        .where(events.c.name == name, events.c.publish_time >= since)
        .order_by(events.c.sequence)
    )
    for row in conn.execute(stmt):
        if matches(match_json, row.payload_json):
            return StoredEvent(row.sequence, row.payload_json, row.actor)
    return None
