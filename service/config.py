"""Server settings, from command-line flags or environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DB_POOL_SIZE = 20  # PostgreSQL connections one server opens at most

DEFAULT_ADDRESS = "127.0.0.1:50051"
# The HTTP listener (health probes, metrics, webhooks): "auto" is the gRPC
# address's host and the next port (port 0 stays 0), "off" turns it off.
HTTP_AUTO = "auto"
HTTP_OFF = "off"
DEFAULT_DATABASE = "stepd.db"
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
MAX_JOURNAL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server process needs to start."""

    address: str = DEFAULT_ADDRESS
    # The HTTP listener's host:port, or "off". Tests and embedded servers leave
    # it off; `stepd serve` turns it on (``http_address_for``).
    http_address: str = HTTP_OFF
    # A SQLite file path, sqlite:///path, or postgresql://user@host:port/dbname.
    database: str = DEFAULT_DATABASE
    # PostgreSQL only: the most connections this server opens.
    db_pool_size: int = DEFAULT_DB_POOL_SIZE
    # SQLite durability: FULL survives power loss, NORMAL survives a process crash.
    sqlite_synchronous: str = "FULL"
    # The largest input, result or step payload accepted, in bytes.
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    # The longest GetRun(wait=true) holds a call before answering, in seconds.
    max_wait_seconds: float = 60.0
    # A worker silent this long (no heartbeat or other message) loses its
    # stream and every run it holds, in milliseconds.
    lease_timeout_ms: int = 30_000
    # The most journal entries (steps, failed attempts, met waits) a run may
    # record when its workflow sets no max_entries of its own.
    max_journal_entries: int = 10_000
    # The most bytes of step results and met waits' payloads a run's journal
    # may hold; the step that would pass it fails the run (journal_too_large).
    max_journal_bytes: int = MAX_JOURNAL_BYTES
    # PostgreSQL replicas: how often a replica whose workers have room polls for
    # ready runs it was not notified of, in milliseconds.
    replica_poll_ms: int = 2_000
    # How long before its time a sleep (or a retry's backoff) that is its run's
    # only wait is met, so the run is on its worker when the time comes; the
    # worker goes on at the time itself (docs/workflows.md, "Durable sleep").
    timer_lead_ms: int = 1_000
    # How often every key with runs waiting under a concurrency limit is checked
    # for room (besides when a run of the key ends), in milliseconds.
    concurrency_sweep_ms: int = 2_000
    # Finished runs are deleted this long after they ended, in milliseconds
    # (0: kept forever). See docs/operations.md, "Retention".
    retention_ms: int = 0
    # Seconds a stopping server gives in-flight calls to finish.
    shutdown_grace_seconds: float = 5.0
    # -- security (docs/security.md; stepd.server.security) ------------------
    # API keys: "keys" (required), "none", or "auto" (required unless the
    # address is a loopback one).
    auth: str = "auto"
    # TLS: the server's certificate chain and private key (PEM files).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Mutual TLS: clients must show a certificate signed by a CA in this bundle.
    tls_client_ca_file: str | None = None
    # Listen on a non-loopback address without keys, TLS or a hook secret.
    insecure: bool = False
    # The secrets hook tokens are derived from (the first mints, all verify);
    # none: a key stored in the database (only on a server open on loopback).
    hook_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    # Signed event deliveries over HTTP: a file of "EVENT_NAME SECRET" lines.
    event_secrets_file: str | None = None
    # How often the API keys are read again (a change elsewhere counts within it).
    key_refresh_seconds: float = 2.0
    # OpenTelemetry spans of the RPCs, and the trace context of Trigger's span
    # stored with each run (needs the `stepd[otel]` extra; docs/observability.md).
    otel: bool = False

    @property
    def http_enabled(self) -> bool:
        """Whether the HTTP listener runs."""
        return self.http_address.lower() != HTTP_OFF

    @property
    def heartbeat_interval_ms(self) -> int:
        """How often workers are asked to send a message: a third of the lease."""
        return max(self.lease_timeout_ms // 3, 1)


def http_address_for(grpc_address: str, setting: str) -> str:
    """The HTTP listener's address for ``--http-address``: itself, or for "auto"
    the gRPC host with the next port (50051 gives 50052; 0 gives 0), "off" when
    gRPC listens on a Unix socket."""
    if setting.lower() != HTTP_AUTO:
        return setting
    if grpc_address.startswith("unix"):
        return HTTP_OFF
    host, _, port = grpc_address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        return HTTP_OFF
    return f"{host}:{number + 1 if number else 0}"
