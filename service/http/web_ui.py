"""The web UI: static pages (``ui/``) served at ``/``, a sign-in that keeps the
API key in a session cookie, and ``GET /api/me`` (what the caller may do, so
the pages show only the buttons the key's role may use; the server refuses
the rest anyway).

The pages are plain HTML, CSS and JavaScript with no build step and nothing
fetched from elsewhere: they work offline and ship in the wheel. Every action
is an RPC through ``/api/{service}/{method}`` (``gateway.py``), the same RPCs
the command line and the SDK use.
"""

from __future__ import annotations

import functools
from pathlib import Path

from aiohttp import web

from stepd.server.http.access import SESSION_COOKIE, Access
from stepd.server.http.responses import error_answer, json_answer
from stepd.server.security.roles import Principal, Right

ASSETS = Path(__file__).parent / "ui"
#: How long a browser stays signed in.
SESSION_SECONDS = 12 * 3600
#: Pages may run only their own scripts and talk only to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class WebUi:
    """The UI's routes."""

    def __init__(self, access: Access, *, secure_cookie: bool) -> None:
        self._access = access
        self._secure_cookie = secure_cookie

    def add_routes(self, app: web.Application) -> None:
        """Register the pages, the assets, the session and ``/api/me``."""
        app.router.add_get("/", self.index)
        app.router.add_get("/ui/{name}", self.asset)
        app.router.add_post("/ui/session", self.sign_in)
        app.router.add_delete("/ui/session", self.sign_out)
        app.router.add_get("/api/me", self.me)

    async def index(self, request: web.Request) -> web.FileResponse:
        """The single page; the fragment after ``#`` picks what it shows."""
        return web.FileResponse(ASSETS / "index.html", headers=SECURITY_HEADERS)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        """One of the UI's files (no directories, nothing outside ``ui/``)."""
        name = request.match_info["name"]
        if "/" in name or name.startswith(".") or name not in _asset_names():
            return error_answer(404, "no such file")
        path = ASSETS / name
        return web.FileResponse(path, headers=SECURITY_HEADERS)

    async def sign_in(self, request: web.Request) -> web.Response:
        """Check the API key in the body (``{"api_key": ...}``) and keep it in an
        HttpOnly, SameSite=Strict cookie."""
        try:
            body = await request.json()
            key = body["api_key"] if isinstance(body, dict) else None
        except (ValueError, KeyError, RecursionError):  # RecursionError: nested too deep
            key = None
        if not isinstance(key, str) or not key.strip() or len(key) > 200:
            return error_answer(400, 'send {"api_key": "stepd_..."}')
        principal = await self._access.authenticate(key.strip())
        answer = json_answer(_identity(principal, self._access.keys_required))
        answer.set_cookie(
            SESSION_COOKIE,
            key.strip(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            secure=self._secure_cookie,
            path="/",
        )
        return answer

    async def sign_out(self, request: web.Request) -> web.Response:
        """Forget the session cookie."""
        answer = json_answer({"signed_out": True})
        answer.del_cookie(SESSION_COOKIE, path="/")
        return answer

    async def me(self, request: web.Request) -> web.Response:
        """Who the caller is and what it may do."""
        principal = await self._access.identify(request)
        return json_answer(_identity(principal, self._access.keys_required))


def _identity(principal: Principal | None, keys_required: bool) -> dict[str, object]:
    if principal is None:
        return {"keys_required": keys_required, "rights": sorted(r.value for r in Right)}
    return {
        "keys_required": keys_required,
        "key_id": principal.key_id,
        "name": principal.name,
        "role": principal.role.value,
        "rights": sorted(r.value for r in principal.rights),
    }


@functools.cache
def _asset_names() -> frozenset[str]:
    """The names of the UI's files (looked up instead of the file system, so that
    no name a caller sends reaches ``stat``: a long one would raise)."""
    return frozenset(p.name for p in ASSETS.iterdir() if p.is_file())
