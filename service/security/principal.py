"""Who makes the call being handled: set by the authorization wrapper
(``auth_interceptor.py``), read by handlers (who acted) and the JSON log's
``key_id`` field. Imports nothing heavy, so a helper process can log alike."""

from __future__ import annotations

import contextvars

from stepd.server.security.roles import Principal

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "stepd_principal", default=None
)


def set_principal(principal: Principal | None) -> None:
    """Make ``principal`` the caller of the call being handled."""
    _PRINCIPAL.set(principal)


def current_principal() -> Principal | None:
    """Who makes the call being handled (None on a server without keys)."""
    return _PRINCIPAL.get()


def current_key_id() -> str:
    """The API key id of the call being handled, "" on a server without keys."""
    principal = _PRINCIPAL.get()
    return principal.key_id if principal is not None else ""
