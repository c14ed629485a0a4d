"""Server settings, from command-line flags or environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DB_POOL_SIZE = 20  # PostgreSQL connections one server opens at most

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE = "stepd.db"
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server process needs to start."""

    address: str = DEFAULT_ADDRESS
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
    # PostgreSQL replicas: how often a replica whose workers have room polls for
    # ready runs it was not notified of, in milliseconds.
    replica_poll_ms: int = 2_000
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
    # How often the API keys are read again (a change elsewhere counts within it).
    key_refresh_seconds: float = 2.0

    @property
    def heartbeat_interval_ms(self) -> int:
        """How often workers are asked to send a message: a third of the lease."""
        return max(self.lease_timeout_ms // 3, 1)
