"""API keys: create, list, revoke (the ``api_keys`` table).

Only the SHA-256 of a key is stored (see ``stepd.server.security.keys``); a
copy of the database names the keys but cannot be used to call the server.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, RowMapping, select, update

from stepd.server.domain_keys import ApiKeyRecord, Role
from stepd.server.store.executor import Committer, Reader
from stepd.server.store.schema import api_keys


def insert(conn: Connection, record: ApiKeyRecord) -> None:
    """Store a new key."""
    conn.execute(
        api_keys.insert().values(
            key_id=record.key_id,
            name=record.name,
            role=record.role.value,
            workflows=json.dumps(list(record.workflows)),
            secret_hash=record.secret_hash,
            create_time=record.create_time,
            expire_time=record.expire_time,
            revoke_time=record.revoke_time,
            created_by=record.created_by,
        )
    )


def revoke(conn: Connection, key_id: str, now: int) -> ApiKeyRecord | None:
    """Revoke a key (a revoked key keeps its first revoke time); None when unknown."""
    conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoke_time.is_(None))
        .values(revoke_time=now)
    )
    row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).mappings().first()
    return None if row is None else record_from_row(row)


def read_all(conn: Connection) -> list[ApiKeyRecord]:
    """Every key, revoked ones included, by key id."""
    return [
        record_from_row(row)
        for row in conn.execute(select(api_keys).order_by(api_keys.c.key_id)).mappings()
    ]


def record_from_row(row: RowMapping) -> ApiKeyRecord:
    """A stored row as a record."""
    return ApiKeyRecord(
        key_id=row["key_id"],
        name=row["name"],
        role=Role(row["role"]),
        workflows=tuple(json.loads(row["workflows"])),
        secret_hash=row["secret_hash"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
        created_by=row["created_by"],
    )


class KeyStoreMixin:
    """The ``Store`` methods for API keys, for ``SqlStore``."""

    _committer: Committer
    _reads: Reader

    async def create_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new key (its id is random: a clash is an error)."""
        await self._committer.submit(lambda conn: insert(conn, record))

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        """Revoke a key; return it (None when there is no such key)."""
        return await self._committer.submit(lambda conn: revoke(conn, key_id, now))

    async def api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones included, by key id."""
        return await self._reads.run(read_all)
