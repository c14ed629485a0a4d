"""Each run's signal inbox: signals in send order, each taken by one wait."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from stepd.server.store.schema import signals


@dataclass(frozen=True, slots=True)
class StoredSignal:
    """One buffered signal."""

    sequence: int
    payload_json: str


def seen(conn: Connection, run_id: str, request_id: str) -> bool:
    """Whether a signal with ``request_id`` was stored for the run."""
    found = conn.execute(
        select(signals.c.sequence).where(
            signals.c.run_id == run_id, signals.c.request_id == request_id
        )
    ).first()
    return found is not None


def insert(
    conn: Connection, run_id: str, name: str, payload_json: str, request_id: str | None, now: int
) -> int | None:
    """Buffer a signal; None when ``request_id`` was stored for the run before."""
    if request_id is not None and seen(conn, run_id, request_id):
        return None
    return int(
        conn.execute(
            signals.insert()
            .values(
                run_id=run_id,
                name=name,
                payload_json=payload_json,
                request_id=request_id,
                send_time=now,
            )
            .returning(signals.c.sequence)
        ).scalar_one()
    )


def oldest_unconsumed(conn: Connection, run_id: str, name: str) -> StoredSignal | None:
    """The run's oldest signal of ``name`` that no wait took yet."""
    row = conn.execute(
        select(signals.c.sequence, signals.c.payload_json)
        .where(
            signals.c.run_id == run_id,
            signals.c.name == name,
            signals.c.consumed_by.is_(None),
        )
        .order_by(signals.c.sequence)
        .limit(1)
    ).first()
    return None if row is None else StoredSignal(row.sequence, row.payload_json)


def consume(conn: Connection, sequence: int, wait_key: str) -> None:
    """Give a buffered signal to a wait."""
    conn.execute(update(signals).where(signals.c.sequence == sequence).values(consumed_by=wait_key))
