"""How the ``stepd`` command line connects to a server (``stepd health``, ``stepd keys``).

The same flags and environment variables as ``stepd-worker``: ``--api-key``
(``STEPD_API_KEY``), ``--tls`` (TLS with the system's CA certificates),
``--tls-ca`` (``STEPD_TLS_CA``, a CA bundle; implies TLS), ``--tls-client-cert``
and ``--tls-client-key`` (``STEPD_TLS_CLIENT_CERT``/``_KEY``, for mutual TLS) and
``--tls-server-name`` (``STEPD_TLS_SERVER_NAME``, when the address is not a
name the server's certificate holds).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Where a server is and how to reach it."""

    address: str
    api_key: str | None = None
    tls: bool = False
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    server_name: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the API key."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def channel(self) -> grpc.Channel:
        """A blocking channel to the server; ValueError for an unreadable file."""
        uses_tls = self.tls or bool(self.ca_file or self.client_cert_file)
        if not uses_tls:
            return grpc.insecure_channel(self.address)
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise ValueError(
                "a client certificate needs both --tls-client-cert and --tls-client-key"
            )
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA bundle"),
            private_key=_read(self.client_key_file, "client key"),
            certificate_chain=_read(self.client_cert_file, "client certificate"),
        )
        options = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(self.address, credentials, options=options)


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def add_arguments(parser: argparse.ArgumentParser, default_address: str) -> None:
    """Add the connection flags to a command."""
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help=f"host:port of the server (env STEPD_ADDRESS; default {default_address})",
    )
    parser.add_argument(
        "--api-key", metavar="KEY", help="API key for a server that needs one (env STEPD_API_KEY)"
    )
    parser.add_argument(
        "--tls", action="store_true", help="connect over TLS, trusting the system's CAs"
    )
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="CA bundle to verify the server with (env STEPD_TLS_CA)"
    )
    parser.add_argument(
        "--tls-client-cert",
        metavar="FILE",
        help="client certificate for mutual TLS (env STEPD_TLS_CLIENT_CERT)",
    )
    parser.add_argument(
        "--tls-client-key",
        metavar="FILE",
        help="the client certificate's key (env STEPD_TLS_CLIENT_KEY)",
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name to expect in the server's certificate (env STEPD_TLS_SERVER_NAME)",
    )


def settings_from(args: argparse.Namespace, default_address: str) -> ClientSettings:
    """The connection settings from the flags, else the environment."""

    def pick(value: str | None, env: str) -> str | None:
        return value or os.environ.get(env) or None

    address = pick(args.address, "STEPD_ADDRESS") or default_address
    return ClientSettings(
        # 0.0.0.0 is where a server listens, not an address to call.
        address=address.replace("0.0.0.0", "127.0.0.1"),
        api_key=pick(args.api_key, "STEPD_API_KEY"),
        tls=args.tls,
        ca_file=pick(args.tls_ca, "STEPD_TLS_CA"),
        client_cert_file=pick(args.tls_client_cert, "STEPD_TLS_CLIENT_CERT"),
        client_key_file=pick(args.tls_client_key, "STEPD_TLS_CLIENT_KEY"),
        server_name=pick(args.tls_server_name, "STEPD_TLS_SERVER_NAME"),
    )
