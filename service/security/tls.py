"""The server's TLS credentials, read from PEM files and reloaded when they change.

``--tls-cert`` (the certificate chain) and ``--tls-key`` (its private key) turn
TLS on; ``--tls-client-ca`` (a CA bundle) also requires every client to show a
certificate signed by one of those CAs (mutual TLS). The files are checked at
each new connection (one ``stat`` each) and read again when one changed, so a
renewed certificate is used for new connections without a restart; a pair
that cannot be loaded keeps the previous one (and is logged).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("stepd.security")


class TlsFileError(ValueError):
    """A TLS file is missing or unreadable; the message names it."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate, key and (for mutual TLS) client CA are."""

    cert: str
    key: str
    client_ca: str | None = None


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsFileError(f"the {what} {path} is not PEM (no -----BEGIN line)")
    return data


class _Reloader:
    """grpc's certificate fetcher: a new configuration when a file changed."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._stamp = self._stat()

    def _paths(self) -> list[str]:
        return [p for p in (self._files.cert, self._files.key, self._files.client_ca) if p]

    def _stat(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._paths():
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((0, 0))
            else:
                stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        files = self._files
        pair = (_read(files.key, "TLS key"), _read(files.cert, "TLS certificate"))
        client_ca = _read(files.client_ca, "client CA bundle") if files.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=client_ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._stat()
        if stamp == self._stamp:
            return None  # unchanged: grpc keeps the current configuration
        try:
            configuration = self.configuration()
        except TlsFileError as exc:
            log.error("TLS files changed but cannot be loaded (%s); keeping the old ones", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate files changed: loaded them for new connections")
        return configuration


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; TlsFileError when a file is unusable."""
    reloader = _Reloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.configuration(),
        reloader,  # type: ignore[arg-type]  # grpc takes None for "unchanged"
        require_client_authentication=files.client_ca is not None,
    )


def http_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """The HTTP listener's TLS settings from the same files as gRPC's (read once:
    a renewed certificate is used by HTTP after a restart); TlsFileError when a
    file is unusable."""
    _read(files.cert, "TLS certificate")
    _read(files.key, "TLS key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(files.cert, files.key)
        if files.client_ca is not None:
            context.load_verify_locations(files.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(f"cannot load the TLS certificate and key: {exc}") from None
    return context
