"""An in-process server that requires API keys, and keys of every role made through it.

The first admin key is made on the database before the server starts (as
``stepd keys create --database`` does); every other key through the
AdminService with that admin key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from stepd.server.domain_keys import Role
from stepd.server.security.key_admin import KeyAdmin
from stepd.server.store import open_store
from stepd.v1 import admin_service_pb2 as admin
from stepd.v1 import admin_service_pb2_grpc
from tests.server.conftest import Harness, start_harness

Metadata = tuple[tuple[str, str], ...]


def bearer(key: str) -> Metadata:
    """The metadata that carries ``key``."""
    return (("authorization", f"Bearer {key}"),)


async def bootstrap_admin_key(database: str) -> str:
    """Make an admin key on the database directly (no server may hold a SQLite file)."""
    store = await open_store(database)
    try:
        _, key = await KeyAdmin(store).create("bootstrap", Role.ADMIN)
    finally:
        await store.close()
    return key


class SecureHarness:
    """A ``Harness`` whose server needs keys, with an admin key to make more."""

    def __init__(self, harness: Harness, admin_key: str) -> None:
        self.harness = harness
        self.admin_key = admin_key
        self.admin = admin_service_pb2_grpc.AdminServiceStub(harness.channel)

    async def create_key(
        self,
        role: str,
        workflows: tuple[str, ...] = (),
        *,
        name: str = "",
        expire_ms: int | None = None,
        as_key: str | None = None,
    ) -> tuple[str, str]:
        """Make a key through the AdminService; (key id, key)."""
        request = admin.CreateApiKeyRequest(
            name=name or f"{role}-key",
            role=admin.ApiKeyRole.Value(f"API_KEY_ROLE_{role.upper()}"),
            workflows=list(workflows),
        )
        if expire_ms is not None:
            request.expire_time.FromMilliseconds(expire_ms)
        created = await self.admin.CreateApiKey(request, metadata=bearer(as_key or self.admin_key))
        return created.key.key_id, created.secret

    async def revoke(self, key_id: str, *, as_key: str | None = None) -> admin.ApiKey:
        """Revoke a key through the AdminService."""
        revoked = await self.admin.RevokeApiKey(
            admin.RevokeApiKeyRequest(key_id=key_id), metadata=bearer(as_key or self.admin_key)
        )
        return revoked.key

    async def close(self) -> None:
        await self.harness.close()


async def start_secure(database: str, **settings: Any) -> SecureHarness:
    """Bootstrap an admin key, then start a server that requires keys."""
    admin_key = await bootstrap_admin_key(database)
    harness = await start_harness(database, auth="keys", **settings)
    return SecureHarness(harness, admin_key)


@pytest.fixture
async def secure(database: str) -> AsyncIterator[SecureHarness]:
    """A server that requires API keys (and an admin key for it)."""
    started = await start_secure(database)
    yield started
    await started.close()
