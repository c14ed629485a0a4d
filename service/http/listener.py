"""The HTTP listener beside gRPC: one aiohttp application on its own address.

The routes come in groups, each an object with ``add_routes(app)``: the probes
(``/healthz``, ``/readyz``), ``/metrics``, the webhooks, the web UI and its
RPC gateway. It serves over TLS with the gRPC listener's certificate when
one is configured. Off loopback it follows the same rule as gRPC
(``security/exposure.py``): TLS and API keys, or ``--insecure``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from stepd.server.security.exposure import host_of

log = logging.getLogger("stepd.http")

#: Room for the JSON body's framing above the payload limit (a larger body gets 413).
BODY_SLACK = 64 * 1024
#: Seconds requests in flight may take to finish when the server stops (aiohttp
#: waits 60 s by default; the whole server stop is bounded, see stopping.py).
STOP_TIMEOUT_SECONDS = 2.0


class RouteGroup(Protocol):
    """Routes that register themselves on the application."""

    def add_routes(self, app: web.Application) -> None:
        """Add this group's routes to ``app``."""


class HttpListener:
    """Serves the HTTP routes on ``address`` once started; ``port`` is the bound port."""

    def __init__(
        self,
        address: str,
        routes: Sequence[RouteGroup],
        *,
        max_body_bytes: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._address = address
        self._tls = tls
        self._app = web.Application(client_max_size=max_body_bytes + BODY_SLACK)
        for group in routes:
            group.add_routes(self._app)
        self._runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=STOP_TIMEOUT_SECONDS,
        )
        self.port = 0

    @property
    def url(self) -> str:
        """The listener's base URL (valid once started)."""
        host = host_of(self._address) or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        """Bind (OSError when the address is taken or invalid) and serve."""
        sock = _bind(self._address)
        self.port = sock.getsockname()[1]
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self._tls).start()

    async def stop(self) -> None:
        """Stop serving and close open connections (requests in flight get
        ``STOP_TIMEOUT_SECONDS``)."""
        await self._runner.cleanup()


def _bind(address: str) -> socket.socket:
    """A listening socket for ``host:port`` (a second server on the port fails)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise OSError(f"cannot listen on {address}: expected HOST:PORT") from None
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {address}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
