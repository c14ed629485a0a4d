"""Creating, listing and revoking API keys (the AdminService RPCs and ``stepd keys``)."""

from __future__ import annotations

from collections.abc import Sequence

from stepd.server.domain import now_ms
from stepd.server.domain_keys import ApiKeyRecord, Role
from stepd.server.engine.errors import InvalidArgument, NotFound
from stepd.server.security import keys
from stepd.server.security.keyring import KeyRing
from stepd.server.security.roles import check_workflow_patterns
from stepd.server.store.base import KeyStore

MAX_NAME_LENGTH = 200
MAX_WORKFLOWS = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class KeyAdmin:
    """Key management on a store; with a ring, changes count on this server at once."""

    def __init__(self, store: KeyStore, ring: KeyRing | None = None) -> None:
        self._store = store
        self._ring = ring

    async def create(
        self,
        name: str,
        role: Role | None,
        workflows: Sequence[str] = (),
        expire_time: int | None = None,
        created_by: str = "",
    ) -> tuple[ApiKeyRecord, str]:
        """Create a key; return its record and the key itself (shown once)."""
        name = name.strip()
        if not name:
            raise InvalidArgument("name is required (e.g. the service that will use the key)")
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"name is longer than {MAX_NAME_LENGTH} characters")
        if role is None:
            raise InvalidArgument("role is required: one of " + ", ".join(r.value for r in Role))
        patterns = tuple(workflows)
        if role is Role.WORKER:
            problem = check_workflow_patterns(patterns)
            if problem is not None:
                raise InvalidArgument(f"workflows: {problem}")
            if len(patterns) > MAX_WORKFLOWS:
                raise InvalidArgument(f"workflows: at most {MAX_WORKFLOWS} entries")
        elif patterns:
            raise InvalidArgument(
                "workflows is only for worker keys (an admin key serves every workflow; "
                "other roles cannot serve)"
            )
        now = now_ms()
        if expire_time is not None and expire_time <= now:
            raise InvalidArgument("expire_time must be in the future")
        key_id, key = keys.generate()
        record = ApiKeyRecord(
            key_id=key_id,
            name=name,
            role=role,
            workflows=patterns,
            secret_hash=keys.hash_key(key),
            create_time=now,
            expire_time=expire_time,
            created_by=created_by,
        )
        await self._store.create_api_key(record)
        if self._ring is not None:
            self._ring.learn(record)
        return record, key

    async def list_page(
        self, page_size: int, after: str | None, show_revoked: bool
    ) -> tuple[list[ApiKeyRecord], str | None]:
        """One page of keys by key id after ``after``, and the next page's cursor."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        records = [
            r
            for r in await self._store.api_keys()
            if (show_revoked or r.revoke_time is None) and (after is None or r.key_id > after)
        ]
        page = records[:size]
        return page, (page[-1].key_id if len(records) > size else None)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key: at once here, within the refresh period on other replicas."""
        if not key_id:
            raise InvalidArgument("key_id is required")
        record = await self._store.revoke_api_key(key_id, now_ms())
        if record is None:
            raise NotFound(f"no API key has id {key_id!r}")
        if self._ring is not None:
            self._ring.learn(record)
        return record
