"""Plain data for API keys and workflow versions, shared by security, engine and store.

Like ``stepd.server.domain``: no gRPC, no database. Times are epoch milliseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    """What an API key may do (``stepd.server.security.roles`` lists the rights)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    CLIENT = "client"
    READER = "reader"
    WORKER = "worker"


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as stored: never the key itself, only its SHA-256."""

    key_id: str
    name: str
    role: Role
    # The workflows a worker key may serve (names, or prefixes ending in "*").
    workflows: tuple[str, ...]
    secret_hash: str
    create_time: int
    expire_time: int | None = None
    revoke_time: int | None = None
    # The key id of the admin who created it ("" when made on the database directly).
    created_by: str = ""

    def usable_at(self, now: int) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoke_time is not None:
            return False
        return self.expire_time is None or now < self.expire_time


class PinStatus(enum.Enum):
    """What pinning a workflow's current version did."""

    PINNED = "pinned"
    UNKNOWN_VERSION = "unknown_version"  # no worker ever registered it
    RETIRED = "retired"


class RetireStatus(enum.Enum):
    """What retiring a workflow version did."""

    RETIRED = "retired"
    ALREADY_RETIRED = "already_retired"
    UNKNOWN_VERSION = "unknown_version"
    PINNED = "pinned"  # the workflow's current version is pinned to it
