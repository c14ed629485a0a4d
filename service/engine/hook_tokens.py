"""Hook tokens: derived, never stored.

The server key is ``HMAC-SHA256(hook secret, "stepd hook key" + database key)``:
the hook secret comes from a file or an environment variable
(``--hook-secret-file``, ``STEPD_HOOK_SECRET``), the database key is random,
made by migration 7. Neither alone derives a token, so a copy of the database
cannot mint one. Several hook secrets may be configured: the first mints, all
verify (rotation). Without a hook secret (a server open on loopback) the
database key is the server key.

Each run gets a secret, ``HMAC-SHA256(server key, run_id)``, in its RunTask.
A hook's token is ``h1.<run_id>.<wait_key>.<mac>`` (each part base64url
without padding), where ``mac`` is the first 16 bytes (128 bits) of
``HMAC-SHA256(run secret, wait_key)``. The SDK makes the token from the run
secret without a round trip, and gets the same token on every replay; the
server checks a token by deriving it again, and stores only its SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "h1"
MAC_BYTES = 16


@dataclass(frozen=True, slots=True)
class HookRef:
    """What a valid token names."""

    run_id: str
    wait_key: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def server_keys(database_key: bytes, hook_secrets: Sequence[bytes]) -> tuple[bytes, ...]:
    """The server keys: one per hook secret (the first mints), or the database key."""
    if not hook_secrets:
        return (database_key,)
    return tuple(
        hmac.new(secret, b"stepd hook key" + database_key, hashlib.sha256).digest()
        for secret in hook_secrets
    )


def run_secret(server_key: bytes, run_id: str) -> bytes:
    """The secret a run's hook tokens are derived from."""
    return hmac.new(server_key, run_id.encode(), hashlib.sha256).digest()


def make_token(secret: bytes, run_id: str, wait_key: str) -> str:
    """The token of one hook of a run."""
    mac = hmac.new(secret, wait_key.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return ".".join((PREFIX, _b64(run_id.encode()), _b64(wait_key.encode()), _b64(mac)))


def verify(server_keys: Sequence[bytes], token: str) -> HookRef | None:
    """The hook a token names, or None when it is malformed or forged (made
    with none of ``server_keys``)."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        return None
    try:
        run_id = _unb64(parts[1]).decode()
        wait_key = _unb64(parts[2]).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    for server_key in server_keys:
        expected = make_token(run_secret(server_key, run_id), run_id, wait_key)
        if hmac.compare_digest(expected.encode(), token.encode()):
            return HookRef(run_id, wait_key)
    return None


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()
