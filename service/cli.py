"""The ``stepd`` command: ``stepd serve``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from stepd.server import __version__
from stepd.server.config import (
    DEFAULT_ADDRESS,
    DEFAULT_DATABASE,
    DEFAULT_DB_POOL_SIZE,
    ServerConfig,
)

SERVER_EXTRA_MISSING = (
    "stepd serve needs the server's dependencies: pip install 'stepd[server]' ({})"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepd", description="stepd durable workflow server")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument(
        "--address",
        default=os.environ.get("STEPD_ADDRESS", DEFAULT_ADDRESS),
        help="host:port to listen on; port 0 picks a free port (env STEPD_ADDRESS)",
    )
    serve.add_argument(
        "--database",
        default=os.environ.get("STEPD_DATABASE", DEFAULT_DATABASE),
        help="SQLite file path, sqlite:///path, or postgresql://user@host:port/dbname "
        "(env STEPD_DATABASE)",
    )
    serve.add_argument(
        "--db-pool-size",
        type=int,
        default=int(os.environ.get("STEPD_DB_POOL_SIZE", str(DEFAULT_DB_POOL_SIZE))),
        help="PostgreSQL: the most connections this server opens "
        f"(env STEPD_DB_POOL_SIZE; default {DEFAULT_DB_POOL_SIZE})",
    )
    serve.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default=os.environ.get("STEPD_SQLITE_SYNCHRONOUS", "FULL"),
        help="FULL survives power loss (default); NORMAL survives a process crash",
    )
    serve.add_argument(
        "--lease-timeout",
        type=float,
        default=float(os.environ.get("STEPD_LEASE_TIMEOUT", "30")),
        help="seconds a silent worker keeps its runs before they go to another worker "
        "(env STEPD_LEASE_TIMEOUT; default 30)",
    )
    serve.add_argument(
        "--max-journal-entries",
        type=int,
        default=int(os.environ.get("STEPD_MAX_JOURNAL_ENTRIES", "10000")),
        help="the most journal entries a run may record when its workflow sets no "
        "max_entries (env STEPD_MAX_JOURNAL_ENTRIES; default 10000)",
    )
    serve.add_argument(
        "--replica-poll-interval",
        type=float,
        default=float(os.environ.get("STEPD_REPLICA_POLL_INTERVAL", "2")),
        help="PostgreSQL: seconds between polls for ready runs a replica was not "
        "notified of (env STEPD_REPLICA_POLL_INTERVAL; default 2)",
    )
    serve.add_argument("--log-level", default=os.environ.get("STEPD_LOG_LEVEL", "INFO"))
    return parser


async def serve(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    from stepd.server.server import create_server
    from stepd.server.store.postgres import display_url

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await create_server(config)
    host = config.address.rsplit(":", 1)[0]
    database = display_url(config.database)
    print(f"stepd serving on {host}:{running.port} (database {database})", flush=True)
    await stop.wait()
    logging.getLogger("stepd.server").info("stopping")
    await running.stop(config.shutdown_grace_seconds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stepd`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.lease_timeout <= 0:
        parser.error("--lease-timeout must be a positive number of seconds")
    if args.max_journal_entries < 1:
        parser.error("--max-journal-entries must be at least 1")
    if args.replica_poll_interval <= 0:
        parser.error("--replica-poll-interval must be a positive number of seconds")
    if args.db_pool_size < 1:
        parser.error("--db-pool-size must be at least 1")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = ServerConfig(
        address=args.address,
        database=args.database,
        sqlite_synchronous=args.sqlite_synchronous,
        db_pool_size=args.db_pool_size,
        lease_timeout_ms=int(args.lease_timeout * 1000),
        max_journal_entries=args.max_journal_entries,
        replica_poll_ms=int(args.replica_poll_interval * 1000),
    )
    try:
        from sqlalchemy.exc import DBAPIError

        from stepd.server.store import SchemaVersionError
    except ImportError as exc:  # a base install: the SDK and this command only
        print(f"stepd: {SERVER_EXTRA_MISSING.format(exc)}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(config))
    except (OSError, ValueError, SchemaVersionError) as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:  # e.g. PostgreSQL refused the login or has no such database
        print(f"stepd: cannot open the database: {exc.orig}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
