"""How the SDK reaches a server: its address, TLS, and the API key sent with each call.

``Client`` builds one from its arguments; a ``Worker`` given a ``Client`` uses
the client's. The key travels as ``authorization: Bearer <key>`` metadata on
every call (and on the worker's stream), over TLS or, on loopback, plaintext.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from stepd.errors import StepdError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class Connection:
    """A server's address and how to reach it. Files are read when it is made."""

    address: str
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
    ) -> Connection:
        """Check the settings and read the files; StepdError says what is wrong.

        TLS is on when ``tls`` is true or a CA or client certificate is given;
        without ``ca_file`` the system's CA certificates verify the server."""
        if not isinstance(address, str) or not address:
            raise StepdError(f"the server address must be a non-empty string, got {address!r}")
        if api_key is not None and (not api_key or any(c in api_key for c in "\r\n ")):
            raise StepdError("api_key must be a non-empty string without spaces")
        if (cert_file is None) != (key_file is None):
            raise StepdError("a client certificate needs both cert_file and key_file")
        use_tls = bool(tls) or ca_file is not None or cert_file is not None
        if tls is False and use_tls:
            raise StepdError("ca_file, cert_file and key_file need TLS; do not pass tls=False")
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

    def channel(self, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        """A new channel to the server, over TLS when it is on."""
        if not self.tls:
            return grpc.aio.insecure_channel(self.address, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        settings: list[tuple[str, int | str]] = list(options)
        if self.server_name:
            settings.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(self.address, credentials, options=settings)


def _read(path: PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StepdError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
