"""The SDK's gRPC edge: how to reach the server and the one mapping of gRPC errors.

``ConnectionSettings`` is the one place for connection settings (address, TLS,
API key): a ``Client`` holds them, and a ``Worker`` made with that client
connects with the same ones. Both open their channels with
``ConnectionSettings.open_channel`` and send ``ConnectionSettings.metadata``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from stepd import errors

PathLike = str | os.PathLike[str]
Req = TypeVar("Req")
Resp = TypeVar("Resp")

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Run tasks carry whole journals and list pages whole runs: no 4 MiB cap.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How the SDK reaches a stepd server: its address, TLS, and the API key sent
    with each call (as ``authorization: Bearer <key>`` metadata, also on the
    worker's stream). Build it with ``create``, which checks the settings and
    reads the certificate files."""

    address: str
    """The server's address: ``host:port``, or any gRPC target
    (``ipv4:10.0.0.1:50051,10.0.0.2:50051`` for several replicas)."""
    api_key: str | None = field(default=None, repr=False)
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def create(
        cls,
        address: str,
        *,
        api_key: str | None = None,
        tls: bool | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        server_name: str | None = None,
    ) -> ConnectionSettings:
        """Check the settings and read the files; StepdError says what is wrong.

        TLS is on when ``tls`` is true or a CA or client certificate is given;
        without ``ca_file`` the system's CA certificates verify the server."""
        if not isinstance(address, str) or not address:
            raise errors.StepdError(
                f"the server address must be a non-empty string, got {address!r}"
            )
        if api_key is not None and (not api_key or any(c in api_key for c in "\r\n ")):
            raise errors.StepdError("api_key must be a non-empty string without spaces")
        if (cert_file is None) != (key_file is None):
            raise errors.StepdError("a client certificate needs both cert_file and key_file")
        use_tls = bool(tls) or ca_file is not None or cert_file is not None
        if tls is False and use_tls:
            raise errors.StepdError(
                "ca_file, cert_file and key_file need TLS; do not pass tls=False"
            )
        return cls(
            address=address,
            api_key=api_key,
            tls=use_tls,
            root_certificates=_read(ca_file, "CA bundle"),
            private_key=_read(key_file, "client key"),
            certificate_chain=_read(cert_file, "client certificate"),
            server_name=server_name,
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries: the API key, when there is one."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def open_channel(self, options: Sequence[tuple[str, int]] = ()) -> grpc.aio.Channel:
        """Open a gRPC channel to the server (``options`` added to the SDK's own),
        over TLS when it is on."""
        settings: list[tuple[str, int | str]] = [*CHANNEL_OPTIONS, *options]
        if not self.tls:
            return grpc.aio.insecure_channel(self.address, options=settings)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        if self.server_name:
            settings.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.address, credentials, options=settings)


def _read(path: PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise errors.StepdError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


_ERRORS: dict[grpc.StatusCode, type[errors.StepdError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.ServerUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
}


def sdk_error(error: grpc.aio.AioRpcError) -> errors.StepdError:
    """Translate a gRPC error into the SDK's error for its status code."""
    code = error.code()
    cls = _ERRORS.get(code, errors.StepdError)
    name = code.name if code is not None else "UNKNOWN"
    result = cls(error.details() or name)
    result.code = name
    return result


async def call(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    rpc_timeout: float | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Resp:
    """Make one unary call (with ``metadata``: ``ConnectionSettings.metadata``); a
    gRPC error is raised as the SDK's error."""
    try:
        return await method(request, timeout=rpc_timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        raise sdk_error(exc) from exc
