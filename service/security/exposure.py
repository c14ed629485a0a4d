"""The safe default: a server is open (no keys, no TLS) only on loopback.

On a loopback address (127.0.0.0/8, ::1, localhost, a Unix socket) only
processes on the same host can connect, and the server may run open, so that
``stepd serve`` works with nothing to configure. On any other address it needs
API keys, TLS and a hook secret, and refuses to start without them unless the
operator passes ``--insecure`` (e.g. behind a private network or a proxy that
terminates TLS), saying what is missing and why.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from stepd.server.config import ServerConfig

AUTH_MODES = ("auto", "keys", "none")
#: The shortest hook secret accepted, in characters (``openssl rand -hex 32`` gives 64).
MIN_HOOK_SECRET = 32


class InsecureSetupError(ValueError):
    """The server would be reachable from other hosts without protection."""


def host_of(address: str) -> str:
    """The host part of a ``host:port`` gRPC address ("" for all interfaces)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return "unix"
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def is_loopback(address: str) -> bool:
    """Whether only this host can reach ``address``."""
    host = host_of(address)
    if host in ("unix", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or "" / 0.0.0.0 / [::]: other hosts may reach it


def addresses(config: ServerConfig) -> list[str]:
    """The addresses the server listens on: gRPC's, and HTTP's when it is on."""
    return [config.address, *([config.http_address] if config.http_enabled else [])]


def on_loopback(config: ServerConfig) -> bool:
    """Whether every listener of the server is reachable from this host only."""
    return all(is_loopback(address) for address in addresses(config))


def keys_required(config: ServerConfig) -> bool:
    """Whether calls need an API key: ``--auth keys``, or ``auto`` when a listener
    (gRPC or HTTP) is off loopback."""
    if config.auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, got {config.auth!r}")
    if config.auth == "auto":
        return not on_loopback(config)
    return config.auth == "keys"


def missing_protection(config: ServerConfig) -> list[str]:
    """What a server reachable from other hosts lacks (empty when nothing)."""
    missing = []
    if not keys_required(config):
        missing.append("API keys (--auth keys; the default off loopback)")
    if config.tls_cert_file is None:
        missing.append("TLS (--tls-cert and --tls-key)")
    if not config.hook_secrets:
        missing.append("a hook secret (--hook-secret-file or STEPD_HOOK_SECRET)")
    return missing


def check(config: ServerConfig) -> None:
    """Raise InsecureSetupError when the server would be exposed unprotected."""
    if config.insecure or on_loopback(config):
        return
    missing = missing_protection(config)
    if missing:
        exposed = list(dict.fromkeys(a for a in addresses(config) if not is_loopback(a)))
        raise InsecureSetupError(
            f"refusing to listen on {' and '.join(exposed)} without {'; '.join(missing)}: "
            "any host that reaches the port could read every run's input and result, "
            "cancel and signal runs, and connect as a worker to take runs and their hook "
            "secrets. Configure them (docs/security.md), or pass --insecure "
            "(STEPD_INSECURE=1) to run this way anyway, e.g. on a private network"
        )


def read_hook_secrets(file: str | None, env_value: str | None) -> tuple[bytes, ...]:
    """The hook secrets from a file or an environment variable's value: one per
    line (or comma-separated), the first mints tokens, all verify them."""
    if file and env_value:
        raise ValueError(
            "give the hook secret by --hook-secret-file or STEPD_HOOK_SECRET, not both"
        )
    if file:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise ValueError(
                f"cannot read the hook secret file {file}: {exc.strerror or exc}"
            ) from None
        source = f"the hook secret file {file}"
    elif env_value:
        text, source = env_value, "STEPD_HOOK_SECRET"
    else:
        return ()
    secrets = [s.strip() for line in text.splitlines() for s in line.split(",") if s.strip()]
    if not secrets:
        raise ValueError(f"{source} holds no secret")
    short = [i + 1 for i, s in enumerate(secrets) if len(s) < MIN_HOOK_SECRET]
    if short:
        raise ValueError(
            f"{source}: secret {', '.join(map(str, short))} is shorter than "
            f"{MIN_HOOK_SECRET} characters (make one with: openssl rand -hex 32)"
        )
    return tuple(s.encode() for s in secrets)


def hook_secret_from_env() -> str | None:
    """STEPD_HOOK_SECRET, if set."""
    return os.environ.get("STEPD_HOOK_SECRET") or None
