"""The ``stepd`` command: ``stepd serve``, ``stepd health``, ``stepd keys`` and the
operator commands (``stepd runs``, ``schedules``, ``events``, ``hooks``: ``ops_cli``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepd.server import __version__, keys_cli, ops_cli
from stepd.server.config import (
    DEFAULT_ADDRESS,
    DEFAULT_DATABASE,
    DEFAULT_DB_POOL_SIZE,
    HTTP_AUTO,
    HTTP_OFF,
    MAX_JOURNAL_BYTES,
    ServerConfig,
    http_address_for,
)
from stepd.server.security.channel import ClientSettings
from stepd.server.security.channel import add_arguments as add_client_arguments
from stepd.server.security.channel import settings_from as client_settings
from stepd.server.security.exposure import read_hook_secrets

SERVER_EXTRA_MISSING = (
    "stepd serve needs the server's dependencies: pip install 'stepd[server]' ({})"
)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The longest --timer-lead: a run handed out early is held by its worker meanwhile.
MAX_TIMER_LEAD_SECONDS = 5.0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _lead_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number of seconds") from None
    if not 0 <= value <= MAX_TIMER_LEAD_SECONDS:
        raise ValueError(f"must be from 0 to {MAX_TIMER_LEAD_SECONDS:g} seconds")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


_PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _period(text: str) -> int:
    """A retention period as milliseconds: "30d", "12h", "90m", "3600s", "2w", or
    "0" / "" (keep runs forever)."""
    text = text.strip().lower()
    if text in ("", "0"):
        return 0
    number, unit = text[:-1], text[-1:]
    if unit not in _PERIOD_UNITS or not number.isdigit() or int(number) < 1:
        raise ValueError("must be a whole number with a unit s, m, h, d or w (e.g. 30d), or 0")
    return int(number) * _PERIOD_UNITS[unit] * 1000


def _optional_path(text: str) -> str | None:
    return text or None


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/true/yes or 0/false/no")


def _http_address(text: str) -> str:
    if text.lower() in (HTTP_AUTO, HTTP_OFF):
        return text.lower()
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port, auto or off")
    return text


def _lower_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return text.lower()

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.upper() not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return text.upper()

    return parse


@dataclass(frozen=True)
class Setting:
    """One ``stepd serve`` setting: a flag, its environment variable, its parser."""

    flag: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    # A flag without a value (its presence means "1").
    bare: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


SERVE_SETTINGS = (
    Setting(
        "--address",
        "STEPD_ADDRESS",
        DEFAULT_ADDRESS,
        str,
        "host:port to listen on; port 0 picks a free port",
    ),
    Setting(
        "--http-address",
        "STEPD_HTTP_ADDRESS",
        HTTP_AUTO,
        _http_address,
        "host:port of the HTTP listener (health probes, /metrics, webhooks); auto: the "
        "--address host and the next port; off: no HTTP",
    ),
    Setting(
        "--database",
        "STEPD_DATABASE",
        DEFAULT_DATABASE,
        str,
        "SQLite file path, sqlite:///path, or postgresql://user@host:port/dbname "
        "(keep a password out of the URL: PGPASSWORD or ~/.pgpass)",
    ),
    Setting(
        "--db-pool-size",
        "STEPD_DB_POOL_SIZE",
        str(DEFAULT_DB_POOL_SIZE),
        _at_least_one,
        "PostgreSQL: the most connections this server opens",
    ),
    Setting(
        "--sqlite-synchronous",
        "STEPD_SQLITE_SYNCHRONOUS",
        "FULL",
        _choice("FULL", "NORMAL"),
        "FULL survives power loss; NORMAL survives a process crash",
    ),
    Setting(
        "--lease-timeout",
        "STEPD_LEASE_TIMEOUT",
        "30",
        _positive_float,
        "seconds a silent worker keeps its runs before they go to another worker",
    ),
    Setting(
        "--max-journal-entries",
        "STEPD_MAX_JOURNAL_ENTRIES",
        "10000",
        _at_least_one,
        "the most journal entries a run may record when its workflow sets no max_entries",
    ),
    Setting(
        "--max-journal-bytes",
        "STEPD_MAX_JOURNAL_BYTES",
        str(MAX_JOURNAL_BYTES),
        _at_least_one,
        "the most bytes of step results and met waits' payloads a run's journal may hold",
    ),
    Setting(
        "--replica-poll-interval",
        "STEPD_REPLICA_POLL_INTERVAL",
        "2",
        _positive_float,
        "PostgreSQL: seconds between polls for ready runs a replica was not notified of",
    ),
    Setting(
        "--timer-lead",
        "STEPD_TIMER_LEAD",
        "1",
        _lead_seconds,
        "seconds before its time a sleep that is its run's only wait is met, so the "
        "run is on a worker when the time comes (0: at its time; at most 5)",
    ),
    Setting(
        "--retention",
        "STEPD_RETENTION",
        "0",
        _period,
        "delete finished runs (journal, waits, history) this long after they ended, "
        "e.g. 30d, 12h; 0 keeps them forever",
    ),
    Setting("--log-level", "STEPD_LOG_LEVEL", "INFO", _choice(*LOG_LEVELS), "log threshold"),
    Setting(
        "--log-format",
        "STEPD_LOG_FORMAT",
        "text",
        _lower_choice("text", "json"),
        "text, or json: one JSON object per line with run_id, workflow, rpc, key_id fields",
    ),
    Setting(
        "--otel",
        "STEPD_OTEL",
        "0",
        _flag,
        "OpenTelemetry: spans of the RPCs, exported as the OTEL_* variables say "
        "(needs stepd[otel]; docs/observability.md)",
        bare=True,
    ),
    # -- security (docs/security.md) ------------------------------------------------
    Setting(
        "--auth",
        "STEPD_AUTH",
        "auto",
        _lower_choice("auto", "keys", "none"),
        "API keys: keys (required), none, or auto (required unless the address is loopback)",
    ),
    Setting("--tls-cert", "STEPD_TLS_CERT", "", _optional_path, "TLS certificate chain (PEM)"),
    Setting("--tls-key", "STEPD_TLS_KEY", "", _optional_path, "the certificate's key (PEM)"),
    Setting(
        "--tls-client-ca",
        "STEPD_TLS_CLIENT_CA",
        "",
        _optional_path,
        "mutual TLS: CA bundle (PEM) that client certificates must be signed by",
    ),
    Setting(
        "--hook-secret-file",
        "STEPD_HOOK_SECRET_FILE",
        "",
        _optional_path,
        "file with the secret hook tokens derive from (one per line: the first mints, all "
        "verify); or the secret itself in STEPD_HOOK_SECRET",
    ),
    Setting(
        "--event-secrets-file",
        "STEPD_EVENT_SECRETS_FILE",
        "",
        _optional_path,
        "file of 'EVENT_NAME SECRET' lines: POST /events/NAME signed with a secret (HMAC)",
    ),
    Setting(
        "--insecure",
        "STEPD_INSECURE",
        "0",
        _flag,
        "off loopback, start even without API keys, TLS or a hook secret",
        bare=True,
    ),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepd", description="stepd durable workflow server", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server", allow_abbrev=False)
    for setting in SERVE_SETTINGS:
        if setting.bare:
            serve.add_argument(
                setting.flag,
                action="store_const",
                const="1",
                help=f"{setting.help} (env {setting.env}=1)",
            )
            continue
        serve.add_argument(
            setting.flag,
            metavar=setting.dest.upper(),
            help=f"{setting.help} (env {setting.env}; default {setting.default or 'none'})",
        )
    health = commands.add_parser(
        "health", help="ask a server whether it is serving (exit 0 if so)", allow_abbrev=False
    )
    add_client_arguments(health, DEFAULT_ADDRESS)
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    keys_cli.add_parser(commands, DEFAULT_ADDRESS)
    ops_cli.add_parsers(commands, DEFAULT_ADDRESS)
    return parser


def _health(settings: ClientSettings, timeout: float) -> int:
    """Print the server's health status; 0 when SERVING (for container health checks).
    Health needs no API key; over TLS it needs the CA (and, for mutual TLS, a
    client certificate)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = settings.address
    try:
        channel = settings.channel()
    except ValueError as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return 1
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=settings.metadata, timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code().name
            print(f"stepd: {address}: {code}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(status)
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Each setting from its flag, else its environment variable, else its default.

    Values are checked here, after parsing, so a bad environment variable never
    stops ``--help`` and its error names where the value came from.
    """
    values: dict[str, Any] = {}
    for setting in SERVE_SETTINGS:
        given = getattr(args, setting.dest)
        if given is not None:
            source, text = setting.flag, given
        elif setting.env in os.environ:
            source, text = setting.env, os.environ[setting.env]
        else:
            source, text = "default", setting.default
        try:
            values[setting.dest] = setting.parse(text)
        except ValueError as exc:
            parser.error(f"{source}={text!r} {exc}")
    return values


async def serve(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    from stepd.server.server import create_server, tune_garbage_collection
    from stepd.server.stopping import stop_within
    from stepd.server.store.postgres import display_url

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await create_server(config)
    tune_garbage_collection()
    host = config.address.rsplit(":", 1)[0]
    database = display_url(config.database)
    print(f"stepd serving on {host}:{running.port} (database {database})", flush=True)
    if running.http is not None:
        print(f"stepd http on {running.http.url}", flush=True)
    await stop.wait()
    logging.getLogger("stepd.server").info("stopping")
    await stop_within(running.stop(config.shutdown_grace_seconds), config.shutdown_grace_seconds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stepd`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "health":
        return _health(client_settings(args, DEFAULT_ADDRESS), args.timeout)
    if args.command == "keys":
        return keys_cli.run(args, DEFAULT_ADDRESS)
    if args.command in ops_cli.NOUNS:
        return ops_cli.run(args, DEFAULT_ADDRESS)
    settings = _settings(parser, args)
    try:
        hook_secrets = read_hook_secrets(
            settings["hook_secret_file"], os.environ.get("STEPD_HOOK_SECRET") or None
        )
    except ValueError as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return 1
    config = ServerConfig(
        address=settings["address"],
        http_address=http_address_for(settings["address"], settings["http_address"]),
        event_secrets_file=settings["event_secrets_file"],
        database=settings["database"],
        sqlite_synchronous=settings["sqlite_synchronous"],
        db_pool_size=settings["db_pool_size"],
        lease_timeout_ms=int(settings["lease_timeout"] * 1000),
        max_journal_entries=settings["max_journal_entries"],
        max_journal_bytes=settings["max_journal_bytes"],
        replica_poll_ms=int(settings["replica_poll_interval"] * 1000),
        timer_lead_ms=round(settings["timer_lead"] * 1000),
        retention_ms=settings["retention"],
        auth=settings["auth"],
        tls_cert_file=settings["tls_cert"],
        tls_key_file=settings["tls_key"],
        tls_client_ca_file=settings["tls_client_ca"],
        insecure=settings["insecure"],
        hook_secrets=hook_secrets,
        otel=settings["otel"],
    )
    try:
        from sqlalchemy.exc import DBAPIError

        from stepd.server.store import DatabaseInUseError, SchemaVersionError, StoreError
        from stepd.server.telemetry import json_logs
    except ImportError as exc:  # a base install: the SDK and this command only
        print(f"stepd: {SERVER_EXTRA_MISSING.format(exc)}", file=sys.stderr)
        return 1
    json_logs.configure(settings["log_level"], settings["log_format"])
    try:
        asyncio.run(serve(config))
    except (OSError, ValueError, SchemaVersionError, DatabaseInUseError) as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:  # e.g. PostgreSQL refused the login or has no such database
        print(f"stepd: cannot open the database: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        print(f"stepd: cannot open the database: {exc.orig}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
