"""Hook tokens: derived, never stored.

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


def run_secret(server_key: bytes, run_id: str) -> bytes:
    """The secret a run's hook tokens are derived from."""
    return hmac.new(server_key, run_id.encode(), hashlib.sha256).digest()


def make_token(secret: bytes, run_id: str, wait_key: str) -> str:
    """The token of one hook of a run."""
    mac = hmac.new(secret, wait_key.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return ".".join((PREFIX, _b64(run_id.encode()), _b64(wait_key.encode()), _b64(mac)))


def verify(server_key: bytes, token: str) -> HookRef | None:
    """The hook a token names, or None when it is malformed or forged."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        return None
    try:
        run_id = _unb64(parts[1]).decode()
        wait_key = _unb64(parts[2]).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    expected = make_token(run_secret(server_key, run_id), run_id, wait_key)
    if not hmac.compare_digest(expected.encode(), token.encode()):
        return None
    return HookRef(run_id, wait_key)


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()
