"""Who may call an HTTP route: the same API keys and rights as the gRPC API.

A request shows its key as ``Authorization: Bearer <key>``. On a server that
runs without keys (open on loopback) every request passes.
"""

from __future__ import annotations

from aiohttp import web

from stepd.server.http.responses import error_answer
from stepd.server.security.keyring import AuthenticationError, KeyRing
from stepd.server.security.roles import Principal, Right

_BEARER = "bearer "


def bearer_key(request: web.Request) -> str | None:
    """The API key in the request's Authorization header, if any."""
    value = request.headers.get("Authorization", "")
    if value[: len(_BEARER)].lower() != _BEARER:
        return None
    return value[len(_BEARER) :].strip() or None


class Access:
    """Checks a request's API key against ``ring`` (None: no keys needed)."""

    def __init__(self, ring: KeyRing | None) -> None:
        self._ring = ring

    @property
    def keys_required(self) -> bool:
        """Whether requests need an API key."""
        return self._ring is not None

    async def principal(self, request: web.Request, right: Right) -> Principal | None:
        """The key's principal when it has ``right``; None on a server without
        keys. Raises an HTTP 401/403 response otherwise."""
        if self._ring is None:
            return None
        key = bearer_key(request)
        if key is None:
            raise _refusal(401, "this server needs an API key: send 'Authorization: Bearer <key>'")
        try:
            principal = await self._ring.authenticate(key)
        except AuthenticationError as exc:
            raise _refusal(401, str(exc)) from None
        if right not in principal.rights:
            raise _refusal(
                403,
                f"API key {principal.key_id} (role {principal.role.value}) lacks the right "
                f"{right.value!r} that this request needs",
            )
        return principal


def _refusal(status: int, message: str) -> web.HTTPException:
    answer = error_answer(status, message)
    exc_class = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    return exc_class(text=answer.text, content_type="application/json")
