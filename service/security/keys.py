"""API keys: their format, and what is stored of them.

A key is ``stepd_<key id>_<secret>``: the key id (16 hex digits) names the key
in listings, logs and run histories; the secret is 256 random bits
(base64url). The server stores only the SHA-256 of the whole key.

A fast hash is enough here, and a slow one (bcrypt, scrypt, Argon2) would buy
nothing: those slow down guessing a low-entropy password, but a 256-bit random
secret cannot be guessed at any speed, so a copy of the stored hashes is
useless to an attacker. The fast hash keeps verification at about a
microsecond, which the hot path needs (and verified keys are cached anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "stepd_"
_KEY = re.compile(r"^stepd_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")


def generate() -> tuple[str, str]:
    """A new key: (key id, the whole key). Show the key once; store its hash."""
    key_id = secrets.token_hex(8)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    found = _KEY.match(key)
    return found[1] if found else None


def hash_key(key: str) -> str:
    """What is stored of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_hash: str) -> bool:
    """Whether ``key`` is the key whose hash is ``stored_hash`` (constant time)."""
    return hmac.compare_digest(hash_key(key), stored_hash)
