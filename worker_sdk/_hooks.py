"""Hooks: a token that lets someone outside a run resume it.

``ctx.create_hook()`` gives the run's next hook its wait key (``hook:N``) and its
token, derived locally from the run's ``hook_secret`` (in every RunTask) as
docs/protocol.md describes, so a replay makes the same token with no round trip::

    token = "h1." + b64(run_id) + "." + b64(wait_key) + "." + b64(mac)
    mac   = HMAC-SHA256(hook_secret, wait_key)[:16]

where ``b64`` is base64url without padding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

TOKEN_PREFIX = "h1"
MAC_BYTES = 16


@dataclass(frozen=True, slots=True)
class Hook:
    """A hook of a run: ``hook = ctx.create_hook()``, then ``await ctx.wait_for_hook(hook)``.

    Hand ``token`` to whoever should resume the run (an approval link, a webhook
    URL); they call ``client.execute_hook(token, payload)`` once. ``key`` is the
    hook's wait key (``hook:1``, ``hook:2``, ... in call order) and ``run_id`` the
    run it belongs to. The token is the same on every replay of the run. It is a
    bearer secret, so it is left out of the hook's ``repr``.
    """

    key: str
    """The hook's wait key: ``hook:N``."""
    token: str = field(repr=False)
    """The token that executes the hook (``Client.execute_hook``)."""
    run_id: str
    """The run the hook belongs to."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hook_token(secret: bytes, run_id: str, wait_key: str) -> str:
    """The token of the hook ``wait_key`` of run ``run_id`` (see the module docstring)."""
    mac = hmac.new(secret, wait_key.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return ".".join((TOKEN_PREFIX, _b64(run_id.encode()), _b64(wait_key.encode()), _b64(mac)))
