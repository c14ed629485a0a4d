"""Signed event deliveries: a per-endpoint secret and an HMAC of the body.

A sender that cannot hold an API key (a payment provider, a code host) signs
each delivery instead, the way those providers sign theirs::

    Stepd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The server accepts a signature made with any secret configured for the event
name, within ``TOLERANCE_SECONDS`` of its clock (an old delivery replayed by
someone who saw it is refused). Secrets come from a file
(``--event-secrets-file``), one ``NAME SECRET`` per line, where ``NAME`` is an
event name or a prefix ending in ``*``; several lines may name one event
(rotation). Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

SIGNATURE_HEADER = "Stepd-Signature"
#: How far a signature's timestamp may be from the server's clock.
TOLERANCE_SECONDS = 300
#: The shortest secret accepted (``openssl rand -hex 32`` gives 64 characters).
MIN_SECRET = 32


@dataclass(frozen=True, slots=True)
class EventSecret:
    """One secret and the event names (a name, or a prefix ending in ``*``) it signs."""

    pattern: str
    secret: bytes = b""

    def covers(self, name: str) -> bool:
        """Whether this secret may sign deliveries of event ``name``."""
        if self.pattern.endswith("*"):
            return name.startswith(self.pattern[:-1])
        return name == self.pattern


def read_event_secrets(file: str | None) -> tuple[EventSecret, ...]:
    """The secrets in ``file`` (none without a file); ValueError naming the line
    when one is unusable."""
    if not file:
        return ()
    try:
        text = Path(file).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the event secrets file {file}: {exc.strerror}") from None
    secrets = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{file}:{number}: expected 'EVENT_NAME SECRET'")
        pattern, secret = parts
        if "*" in pattern[:-1]:
            raise ValueError(f"{file}:{number}: only a trailing * is allowed in {pattern!r}")
        if len(secret) < MIN_SECRET:
            raise ValueError(
                f"{file}:{number}: the secret is shorter than {MIN_SECRET} characters "
                "(make one with: openssl rand -hex 32)"
            )
        secrets.append(EventSecret(pattern, secret.encode()))
    return tuple(secrets)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Stepd-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secrets: tuple[EventSecret, ...], name: str, header: str, body: bytes, now: float
) -> str | None:
    """Why the signature ``header`` does not sign ``body`` for event ``name``, or
    None when a secret configured for the name made it."""
    usable = [s for s in secrets if s.covers(name)]
    if not usable:
        return f"no event secret is configured for {name[:40]!r}; send an API key instead"
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return f"{SIGNATURE_HEADER} needs t=<unix seconds>,v1=<hex HMAC-SHA256>"
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        return f"the signature's timestamp is more than {TOLERANCE_SECONDS} s from the server's"
    signed = f"{timestamp}.".encode() + body
    for secret in usable:
        expected = hmac.new(secret.secret, signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
            return None
    return "the signature does not match the body"
