"""Who may call an HTTP route: the same API keys and rights as the gRPC API.

A request shows its key as ``Authorization: Bearer <key>``, or, from the web
UI, in the session cookie the sign-in page set. On a server that runs without
keys (open on loopback) every request passes.
"""

from __future__ import annotations

from aiohttp import web

from stepd.server.http.responses import error_answer
from stepd.server.security.keyring import AuthenticationError, KeyRing
from stepd.server.security.roles import Principal, Right

_BEARER = "bearer "
#: The session cookie holding a signed-in browser's API key.
SESSION_COOKIE = "stepd_session"


def bearer_key(request: web.Request) -> str | None:
    """The API key in the request's Authorization header, if any."""
    value = request.headers.get("Authorization", "")
    if value[: len(_BEARER)].lower() != _BEARER:
        return None
    return value[len(_BEARER) :].strip() or None


def request_key(request: web.Request) -> tuple[str | None, bool]:
    """The caller's API key, and whether it came from the session cookie."""
    key = bearer_key(request)
    if key is not None:
        return key, False
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie or None), bool(cookie)


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
        principal = await self.identify(request)
        if principal is None:
            return None
        if right not in principal.rights:
            raise _refusal(
                403,
                f"API key {principal.key_id} (role {principal.role.value}) lacks the right "
                f"{right.value!r} that this request needs",
            )
        return principal

    async def identify(self, request: web.Request) -> Principal | None:
        """The request's principal (None on a server without keys); raises an
        HTTP 401 response when the key is missing or unusable."""
        if self._ring is None:
            return None
        key, _ = request_key(request)
        if key is None:
            raise _refusal(401, "this server needs an API key: send 'Authorization: Bearer <key>'")
        return await self.authenticate(key)

    async def authenticate(self, key: str) -> Principal | None:
        """The principal of ``key`` (None on a server without keys); raises an
        HTTP 401 response when the key is unusable."""
        if self._ring is None:
            return None
        try:
            return await self._ring.authenticate(key)
        except AuthenticationError as exc:
            raise _refusal(401, str(exc)) from None


def _refusal(status: int, message: str) -> web.HTTPException:
    answer = error_answer(status, message)
    exc_class = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    return exc_class(text=answer.text, content_type="application/json")
