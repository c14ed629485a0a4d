"""``GET /metrics``: the server's metrics in Prometheus' text format, for a
caller with the ``read`` right when the server requires keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from stepd.server.http.access import Access
from stepd.server.security.roles import Right

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class MetricsRoute:
    """Serves ``exposition()`` at ``/metrics``, after ``refresh()`` when given
    (numbers that must be read from the store first)."""

    def __init__(
        self,
        access: Access,
        exposition: Callable[[], bytes],
        *,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._access = access
        self._exposition = exposition
        self._refresh = refresh

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET /metrics``."""
        app.router.add_get("/metrics", self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        """The metrics, or 401/403."""
        await self._access.principal(request, Right.READ)
        if self._refresh is not None:
            await self._refresh()
        return web.Response(body=self._exposition(), headers={"Content-Type": PROMETHEUS_TEXT})
