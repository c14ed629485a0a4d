"""``stepd-worker``: serve the workflows defined in some modules.

    stepd-worker MODULE [MODULE ...] [--server HOST:PORT] [--concurrency N]

Imports each module (the current directory is on ``sys.path``; a ``.py`` path
works too), serves every ``@workflow`` found as a module attribute, prints
``stepd worker ready (<n> workflows, server <address>)`` once the first stream
is open, and runs until SIGINT or SIGTERM. ``STEPD_SERVER`` and
``STEPD_WORKER_CONCURRENCY`` set the defaults of the two options.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from worker_sdk._client import DEFAULT_ADDRESS
from worker_sdk._definitions import Workflow
from worker_sdk._worker import Worker


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stepd-worker`` command; return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.path.insert(0, os.getcwd())
    workflows: list[Workflow[Any, Any]] = []
    for target in args.modules:
        for workflow in _workflows_in(_import(target)):
            if not any(workflow is known for known in workflows):
                workflows.append(workflow)
    if not workflows:
        parser.error(f"no @workflow found in {', '.join(args.modules)}")
    worker = Worker(args.server, workflows, concurrency=args.concurrency)
    asyncio.run(_serve(worker))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepd-worker", description="Serve the @workflow definitions of some modules."
    )
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="module name or .py path")
    parser.add_argument(
        "--server",
        default=os.environ.get("STEPD_SERVER", DEFAULT_ADDRESS),
        help="server address (env STEPD_SERVER; default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=_positive_int(os.environ.get("STEPD_WORKER_CONCURRENCY", "100")),
        help="runs executed at once (env STEPD_WORKER_CONCURRENCY; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level (default %(default)s)",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _import(target: str) -> ModuleType:
    if target.endswith(".py"):
        path = Path(target).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"stepd-worker: cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def _workflows_in(module: ModuleType) -> list[Workflow[Any, Any]]:
    return [value for value in vars(module).values() if isinstance(value, Workflow)]


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with worker:
        running = asyncio.create_task(worker.run())
        ready = asyncio.create_task(worker.wait_ready())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({running, ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                print(
                    f"stepd worker ready ({len(worker.workflows)} workflows, "
                    f"server {worker.address})",
                    flush=True,
                )
                await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stopping.cancel()
            await worker.stop()
            await running


if __name__ == "__main__":
    sys.exit(main())
