"""Builds the gRPC server: servicers, health, reflection, limits; and stops it."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from stepd.server.api.admin_servicer import AdminServicer
from stepd.server.api.finished_calls import FinishedCalls
from stepd.server.api.handlers import add_service
from stepd.server.api.rpc_wrapping import WrappingServer, compose
from stepd.server.api.wire_scan import poll_request_check
from stepd.server.api.worker_servicer import WorkerServicer
from stepd.server.api.workflow_servicer import WorkflowServicer
from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.config import ServerConfig
from stepd.server.domain import NO_TRACE, TraceContext
from stepd.server.engine.engine import Engine
from stepd.server.engine.validation import worker_message_bytes
from stepd.server.engine.versions import VersionAdmin
from stepd.server.http.access import Access
from stepd.server.http.event_signatures import read_event_secrets
from stepd.server.http.gateway import RpcGateway
from stepd.server.http.listener import HttpListener
from stepd.server.http.metrics_route import MetricsRoute
from stepd.server.http.probes import Probes, ReadinessCheck
from stepd.server.http.web_ui import WebUi
from stepd.server.http.webhooks import Webhooks
from stepd.server.security import exposure
from stepd.server.security.auth_interceptor import Authorization
from stepd.server.security.key_admin import KeyAdmin
from stepd.server.security.keyring import KeyRing
from stepd.server.security.tls import TlsFiles, http_ssl_context, server_credentials
from stepd.server.storage_health import StorageHealth
from stepd.server.store import open_store
from stepd.server.store.base import Store
from stepd.server.store.postgres import display_url
from stepd.server.telemetry.metrics import ServerMetrics
from stepd.server.telemetry.rpc_context import RpcContext, Spans
from stepd.server.telemetry.rpc_metrics import RpcMetrics
from stepd.server.telemetry.span_relay import SpanRelay
from stepd.v1 import admin_service_pb2, worker_service_pb2, workflow_service_pb2

log = logging.getLogger("stepd.server")

WORKFLOW_SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
WORKER_SERVICE = worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"]
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]
SERVICE_NAMES = (WORKFLOW_SERVICE.full_name, WORKER_SERVICE.full_name, ADMIN_SERVICE.full_name)
# gRPC's own message limit sits above the payload limit, so that an oversized
# payload gets stepd's RESOURCE_EXHAUSTED message rather than a transport error.
GRPC_MESSAGE_LIMIT = 64 * 1024 * 1024
#: The service name of the server's spans when ``OTEL_SERVICE_NAME`` is unset.
SPAN_SERVICE_NAME = "stepd"


#: Blocks of this size and more get their own memory mapping (glibc's default).
MMAP_THRESHOLD = 128 * 1024


def return_large_blocks() -> None:
    """Have glibc give large freed blocks back to the system at once.

    glibc maps blocks of 128 KiB and more separately, but once such a block is
    freed it raises that threshold (up to 32 MiB) and keeps later large blocks
    in its heaps, where freed memory mostly stays: after a burst of 2 MiB
    payloads the server held on to tens of MB. Setting the threshold turns
    that adjustment off. Elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # from malloc.h
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)


#: Allocations (minus frees) between collections of the youngest generation;
#: Python's default is 700. See ``tune_garbage_collection``.
GC_YOUNG_THRESHOLD = 25_000


def tune_garbage_collection() -> None:
    """Make the cyclic garbage collector cheaper for a server that has started.

    Serving a run allocates thousands of short-lived objects (protobuf
    messages, SQLAlchemy rows and contexts, asyncio handles), so with Python's
    default thresholds the collector ran about every 700 allocations and took
    a fifth of the server's time under load (py-spy --native: gc_collect_main).
    Here the objects made while starting (modules, tables, compiled
    statements) are moved out of the collector's sight (``gc.freeze``), and
    the youngest generation is collected every ``GC_YOUNG_THRESHOLD``
    allocations: a few MB more held between collections, for about 0.2 ms less
    CPU per run. Reference counting still frees almost everything at once.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, max(middle, 20), max(old, 20))


@dataclass
class RunningServer:
    """A started server, its engine, and the port it listens on."""

    server: grpc.aio.Server
    engine: Engine
    health: Any  # grpc_health.v1.health.aio.HealthServicer (the package has no type hints)
    port: int
    # The API keys in memory; None on a server that runs without keys.
    keys: KeyRing | None = None
    versions: VersionAdmin | None = None
    # The HTTP listener (probes, metrics, webhooks, UI), when it is on.
    http: HttpListener | None = None
    metrics: ServerMetrics | None = None
    stopping: asyncio.Event | None = None
    gateway: RpcGateway | None = None
    # The private directory of the gateway's Unix socket.
    private_dir: str | None = None
    # Keeps the health service NOT_SERVING while storage is unavailable.
    storage: StorageHealth | None = None
    # The span export process, with --otel.
    spans: SpanRelay | None = None

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let calls in flight finish for ``grace`` seconds, close.
        A part that takes longer than a second is logged by name."""
        if self.stopping is not None:
            self.stopping.set()
        parts: list[tuple[str, Callable[[], Awaitable[Any]] | None]] = [
            ("the storage probe", self.storage.close if self.storage else None),
            ("health", self.health.enter_graceful_shutdown),
            ("the HTTP listener", self.http.stop if self.http else None),
            ("the RPC gateway", self.gateway.close if self.gateway else None),
            ("the API keys", self.keys.close if self.keys else None),
            ("the versions", self.versions.close if self.versions else None),
            ("the engine", self.engine.close),
            ("the gRPC server", lambda: self.server.stop(grace)),
            ("the span export", self.spans.close if self.spans else None),
            ("the store", self.engine.store.close),
        ]
        for name, part in parts:
            if part is None:
                continue
            started = time.monotonic()
            await part()
            took = time.monotonic() - started
            if took > 1.0:
                log.warning("stopping: %s took %.1f s", name, took)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


async def create_server(config: ServerConfig, *, clock: Clock = SYSTEM_CLOCK) -> RunningServer:
    """Open the store, recover runs, and start serving on ``config.address``;
    ``clock`` is the server's notion of now (``clock.py``).

    Raises ``InsecureSetupError`` (a ValueError) before touching anything when
    the address is reachable from other hosts and keys, TLS or the hook secret
    are missing (``stepd.server.security.exposure``), and ValueError for
    unusable TLS settings.
    """
    exposure.check(config)
    credentials = _tls_credentials(config)
    event_secrets = read_event_secrets(config.event_secrets_file)
    spans, current_trace, relay = _tracing(config)
    return_large_blocks()
    store = await open_store(
        config.database,
        synchronous=config.sqlite_synchronous,
        pool_size=config.db_pool_size,
        clock=clock,
    )
    engine = Engine(store, config, clock)
    ring = KeyRing(store, config.key_refresh_seconds) if exposure.keys_required(config) else None
    versions = VersionAdmin(store, engine.registry, config.key_refresh_seconds)
    metrics = ServerMetrics(engine)
    engine.observe(metrics)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
            ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # grpc-core cancels calls that arrive while more than 3,000 wait to
            # be picked up by a handler (e.g. 5,000 GetRun waits sent at once);
            # stepd serves that many long waits, so it raises the limit.
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
            # A second server on a port in use must fail, not share the port
            # with the first (the kernel would split calls between the two).
            ("grpc.so_reuseport", 0),
        ],
    )
    # Every method's handler is wrapped once, as it is registered: counted and
    # timed (outermost, so refused calls count too), in its context and span,
    # behind the API-key checks; a call that changes state finishes once
    # started. No interceptor runs per call.
    wrapping = WrappingServer(
        server,
        compose(
            RpcMetrics(metrics.rpcs, metrics.rpc_seconds).wrap,
            RpcContext(spans).wrap,
            Authorization(ring).wrap,
            FinishedCalls().wrap,
        ),
    )
    # Requests are decoded without raising: bytes that are not the request
    # message get INVALID_ARGUMENT from the servicer (api/handlers.py).
    add_service(wrapping, WorkflowServicer(engine, current_trace), WORKFLOW_SERVICE)
    add_service(
        wrapping,
        WorkerServicer(engine),
        WORKER_SERVICE,
        {"PollTask": poll_request_check(worker_message_bytes(config.max_payload_bytes))},
    )
    add_service(wrapping, AdminServicer(KeyAdmin(store, ring), versions), ADMIN_SERVICE)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # no stubs for aio
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, wrapping)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # (enable_server_reflection picks the asyncio servicer only for a grpc.aio.Server.)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]  # exported at run time
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
        ),
        wrapping,
    )
    # Bind before recovering runs: a server that cannot listen touches nothing.
    try:
        if credentials is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, credentials)
    except RuntimeError:  # grpc raises this when the bind fails
        port = 0
    if port == 0:
        await store.close()
        raise OSError(f"cannot listen on {config.address}: the address is in use or invalid")
    stopping = asyncio.Event()
    storage = StorageHealth(store, health_servicer, ("", *SERVICE_NAMES))
    http = gateway = private_dir = None
    if config.http_enabled:
        # The UI's calls reach the services through a socket only this user may open.
        private_dir = tempfile.mkdtemp(prefix="stepd-")
        socket_path = os.path.join(private_dir, "grpc.sock")
        server.add_insecure_port(f"unix:{socket_path}")
        gateway = RpcGateway(f"unix:{socket_path}")
        access = Access(ring)
        tls = _http_tls(config)
        http = HttpListener(
            config.http_address,
            [
                Probes(_readiness(store, stopping, storage)),
                MetricsRoute(access, metrics.exposition, refresh=metrics.refresh),
                Webhooks(engine, access, event_secrets),
                WebUi(access, secure_cookie=tls is not None),
                gateway,
            ],
            max_body_bytes=config.max_payload_bytes,
            tls=tls,
        )
        try:
            await http.start()
        except OSError:
            await store.close()
            shutil.rmtree(private_dir, ignore_errors=True)
            raise
    await engine.start()
    await versions.start()
    if ring is not None:
        await ring.start()
    _log_security(config, ring, credentials is not None)
    if relay is not None:
        await relay.start()
    await server.start()
    storage.start()
    if http is not None:
        log.info("HTTP (probes, metrics, webhooks) on %s", http.url)
    return RunningServer(
        server,
        engine,
        health_servicer,
        port,
        ring,
        versions,
        http,
        metrics,
        stopping,
        gateway,
        private_dir,
        storage,
        relay,
    )


def _tracing(
    config: ServerConfig,
) -> tuple[Spans | None, Callable[[], TraceContext], SpanRelay | None]:
    """The RPC spans, the current span's context and the span export process,
    when tracing is on (OpenTelemetry is imported only then). With
    ``OTEL_TRACES_EXPORTER=none`` no span is made: the caller's context passes
    to the run."""
    if not config.otel:
        return None, lambda: NO_TRACE, None
    from stepd.server.telemetry import otel_setup

    try:
        from stepd.server.telemetry import tracing

        exporting = otel_setup.exporters()
    except otel_setup.OtelMissing as exc:
        raise ValueError(str(exc)) from None
    except ImportError as exc:
        raise ValueError(f"--otel needs OpenTelemetry: pip install 'stepd[otel]' ({exc})") from None
    if not exporting:
        return None, lambda: NO_TRACE, None
    for exporter in exporting:  # made to check the settings; the child makes its own
        exporter.shutdown()
    relay = SpanRelay(SPAN_SERVICE_NAME)
    return tracing.RpcSpans(relay), tracing.current_trace, relay


def _readiness(store: Store, stopping: asyncio.Event, storage: StorageHealth) -> ReadinessCheck:
    """``/readyz``: not while stopping, nor while the storage probe fails, and
    only while the store answers a read."""

    async def check() -> str | None:
        if stopping.is_set():
            return "the server is shutting down"
        if not storage.available:
            return "storage is unavailable"
        try:
            await store.get_run("stepd-readiness-probe")
        except Exception as exc:  # any failure to read means storage is not usable
            return f"storage does not answer: {type(exc).__name__}"
        return None

    return check


def _http_tls(config: ServerConfig) -> ssl.SSLContext | None:
    """The HTTP listener's TLS context: the gRPC listener's certificate, if any."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    return http_ssl_context(
        TlsFiles(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    )


def _tls_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The TLS credentials the settings ask for, or None (plaintext)."""
    cert, key, client_ca = config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert (certificate chain) and --tls-key (its key)")
    return server_credentials(TlsFiles(cert, key, client_ca))


def _log_security(config: ServerConfig, ring: KeyRing | None, tls: bool) -> None:
    """Say at start how the server is protected, and what it lacks."""
    mutual = " (mutual: client certificates required)" if config.tls_client_ca_file else ""
    keys = f"API keys required ({len(ring)} stored)" if ring is not None else "no API keys"
    log.info("security: %s; %s", f"TLS on{mutual}" if tls else "no TLS", keys)
    if ring is not None and not len(ring):
        log.warning(
            "no API key exists yet, so every call is refused: create an admin key with "
            "`stepd keys create --role admin --name NAME --database %s` (see docs/security.md)",
            display_url(config.database),
        )
    missing = exposure.missing_protection(config)
    if missing and not exposure.on_loopback(config):
        log.warning("listening on %s without %s (--insecure)", config.address, "; ".join(missing))
