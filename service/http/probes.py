"""``/healthz`` (the process answers) and ``/readyz`` (it can serve: storage
answers and it is not shutting down), for load balancers and orchestrators.
Neither needs an API key; both say only ok or why not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from stepd.server.http.responses import error_answer, json_answer

#: Says why the server cannot serve now, or None when it can.
ReadinessCheck = Callable[[], Awaitable[str | None]]


class Probes:
    """The probe routes; ``readiness`` decides ``/readyz``."""

    def __init__(self, readiness: ReadinessCheck) -> None:
        self._readiness = readiness

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET /healthz`` and ``GET /readyz``."""
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the process serves HTTP at all."""
        return json_answer({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when the server can serve, else 503 with the reason."""
        problem = await self._readiness()
        if problem is not None:
            return error_answer(503, problem)
        return json_answer({"status": "ready"})
