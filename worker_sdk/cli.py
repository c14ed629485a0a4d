"""``stepd-worker``: serve the workflows defined in some modules.

    stepd-worker MODULE [MODULE ...] [--server HOST:PORT] [--concurrency N]
                 [--shutdown-grace SECONDS] [--api-key KEY] [--tls-ca FILE]

Imports each module (the current directory is on ``sys.path``; a ``.py`` path
works too), serves every ``@workflow`` found as a module attribute, prints
``stepd worker ready (<n> workflows, server <address>)`` once the server has
registered the first stream, and runs until SIGINT or SIGTERM. ``STEPD_SERVER``,
``STEPD_WORKER_CONCURRENCY`` and ``STEPD_WORKER_SHUTDOWN_GRACE`` set the
defaults of the options. A server that needs keys and TLS takes ``--api-key``
(``STEPD_API_KEY``, a worker key naming the workflows), ``--tls-ca``
(``STEPD_TLS_CA``) and, for mutual TLS, ``--tls-client-cert`` and
``--tls-client-key`` (docs/security.md); a refused key ends the command with
exit code 1. ``--log-format json`` (``STEPD_LOG_FORMAT``) logs one JSON object
per line; ``--otel`` (``STEPD_OTEL=1``) exports the run and step spans as the
``OTEL_*`` variables say (docs/observability.md).

The first SIGINT or SIGTERM shuts down gracefully (``Worker.stop()``): no more
tasks, the runs held finish their step bodies in flight and are given back to
the queue, for at most the shutdown grace; a second one skips the grace. The
exit code is 0 either way, even when a sync step's thread is still running
(it cannot be stopped, so the process exits without waiting for it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.util
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

from stepd import __version__
from stepd import _json_logs as json_logs
from stepd import _otel_setup as otel_setup
from stepd._client import DEFAULT_ADDRESS, Client
from stepd._definitions import Workflow
from stepd._worker import MAX_CACHED_RUNS, SHUTDOWN_GRACE, Worker
from stepd.errors import PermissionDeniedError, StepdError, UnauthenticatedError

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("stepd.worker")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``stepd-worker`` command; return its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    json_logs.configure(args.log_level.upper(), args.log_format)
    shutdown_tracing: Callable[[], None] = lambda: None  # noqa: E731
    if args.otel:
        try:
            shutdown_tracing = otel_setup.configure("stepd-worker")
        except (ImportError, ValueError) as exc:
            parser.error(str(exc))
    try:
        return _main(parser, args)
    finally:
        shutdown_tracing()  # sends the spans still batched


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    sys.path.insert(0, os.getcwd())
    workflows: list[Workflow[Any, Any]] = []
    for target in args.modules:
        try:
            module = _import(target)
        except _TargetMissing as exc:
            parser.error(str(exc))
        for workflow in _workflows_in(module):
            if not any(workflow is known for known in workflows):
                workflows.append(workflow)
    if not workflows:
        parser.error(f"no @workflow found in {', '.join(args.modules)}")
    try:
        client = Client(
            args.server,
            api_key=args.api_key or None,
            tls=args.tls or None,
            ca_file=args.tls_ca or None,
            cert_file=args.tls_client_cert or None,
            key_file=args.tls_client_key or None,
            server_name=args.tls_server_name or None,
        )
    except StepdError as exc:
        parser.error(str(exc))
    worker = Worker(
        client,
        workflows,
        concurrency=args.concurrency,
        shutdown_grace=args.shutdown_grace,
        max_cached_runs=args.max_cached_runs,
    )
    _tune_garbage_collection()
    try:
        asyncio.run(_serve(worker))
    except (UnauthenticatedError, PermissionDeniedError) as exc:
        print(f"stepd-worker: {exc.code}: {exc}", file=sys.stderr)
        return 1
    return 0


#: Allocations (minus frees) between collections of the youngest generation in
#: ``stepd-worker`` (Python's default is 700; the server uses the same figure).
GC_YOUNG_THRESHOLD = 25_000


def _tune_garbage_collection() -> None:
    """Make the cyclic garbage collector cheaper for a worker that has started.

    Each task allocates many short-lived objects (protobuf messages, coroutines,
    futures, and with ``--otel`` the spans), so with Python's default threshold
    the collector ran every 700 allocations, each time walking the objects the
    imports made. Those are moved out of its sight (``gc.freeze``) and the
    youngest generation is collected every ``GC_YOUNG_THRESHOLD`` allocations:
    W1 measured about a fifth less worker CPU per run. Only the command does
    this; a ``Worker`` in an application's own process leaves its collector as
    the application set it.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, max(middle, 20), max(old, 20))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepd-worker",
        description="Serve the @workflow definitions of some modules.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="module name or .py path")
    parser.add_argument(
        "--server",
        default=os.environ.get("STEPD_SERVER", DEFAULT_ADDRESS),
        help="server address (env STEPD_SERVER; default %(default)s)",
    )
    env = os.environ.get
    parser.add_argument(
        "--api-key",
        default=env("STEPD_API_KEY", ""),
        metavar="KEY",
        help="API key (a worker key naming the workflows) for a server that needs one "
        "(env STEPD_API_KEY)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="connect over TLS, trusting the system's CAs"
    )
    parser.add_argument(
        "--tls-ca",
        default=env("STEPD_TLS_CA", ""),
        metavar="FILE",
        help="CA bundle that verifies the server; implies TLS (env STEPD_TLS_CA)",
    )
    parser.add_argument(
        "--tls-client-cert",
        default=env("STEPD_TLS_CLIENT_CERT", ""),
        metavar="FILE",
        help="client certificate for mutual TLS (env STEPD_TLS_CLIENT_CERT)",
    )
    parser.add_argument(
        "--tls-client-key",
        default=env("STEPD_TLS_CLIENT_KEY", ""),
        metavar="FILE",
        help="the client certificate's key (env STEPD_TLS_CLIENT_KEY)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=env("STEPD_TLS_SERVER_NAME", ""),
        metavar="NAME",
        help="the name to expect in the server's certificate (env STEPD_TLS_SERVER_NAME)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        # String defaults: argparse converts them only when the flag is absent,
        # so a bad environment value is reported as a usage error, never at --help.
        default=os.environ.get("STEPD_WORKER_CONCURRENCY", "100"),
        help="runs executed at once (env STEPD_WORKER_CONCURRENCY; default %(default)s)",
    )
    parser.add_argument(
        "--max-cached-runs",
        type=_count,
        metavar="N",
        default=os.environ.get("STEPD_WORKER_MAX_CACHED_RUNS", str(MAX_CACHED_RUNS)),
        help="suspended runs kept live to continue without replay; 0: none "
        "(env STEPD_WORKER_MAX_CACHED_RUNS; default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=_grace,
        metavar="SECONDS",
        default=os.environ.get("STEPD_WORKER_SHUTDOWN_GRACE", f"{SHUTDOWN_GRACE:g}"),
        help="on SIGTERM/SIGINT, how long runs may finish the steps they are executing "
        "before they are cancelled and given back (env STEPD_WORKER_SHUTDOWN_GRACE; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level (default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        type=_log_format,
        default=env("STEPD_LOG_FORMAT", "text"),
        help="text, or json: one JSON object per line with run_id, workflow, lease fields "
        "(env STEPD_LOG_FORMAT; default %(default)s)",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        default=_flag(env("STEPD_OTEL", "")),
        help="OpenTelemetry: export the run and step spans as the OTEL_* variables say "
        "(needs stepd[otel]; env STEPD_OTEL=1)",
    )
    return parser


def _log_format(text: str) -> str:
    if text.lower() not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"must be text or json, got {text!r}")
    return text.lower()


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def _count(text: str) -> int:
    """An int >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _grace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


class _TargetMissing(Exception):
    """The module or file named on the command line does not exist."""


def _import(target: str) -> ModuleType:
    """Import a module by name or a .py file by path.

    A target that does not exist is a usage error; an error raised while the
    target's own code runs keeps its traceback (it is the user's bug).
    """
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise _TargetMissing(f"no such file: {target}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"stepd-worker: cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise _TargetMissing(
                f"no module named {exc.name!r} (run from the directory that holds it, "
                "or install it)"
            ) from None
        raise


def _workflows_in(module: ModuleType) -> list[Workflow[Any, Any]]:
    return [value for value in vars(module).values() if isinstance(value, Workflow)]


class _StepThreads(ThreadPoolExecutor):
    """The loop's default executor (where sync steps run): counts the calls in progress."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="stepd-step")
        self._lock = threading.Lock()
        self.busy = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            self.busy += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _: object) -> None:
        with self._lock:
            self.busy -= 1


async def _serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    threads = _StepThreads()
    loop.set_default_executor(threads)
    stops: list[asyncio.Task[None]] = []

    def on_signal(signum: signal.Signals) -> None:
        if not stops:
            logger.warning(
                "%s: shutting down; runs in progress have up to %g s to finish their "
                "steps (send it again to stop at once)",
                signum.name,
                worker.shutdown_grace,
            )
            stops.append(loop.create_task(worker.stop(reason=signum.name)))
        else:
            logger.warning("%s again: releasing every run now", signum.name)
            stops.append(loop.create_task(worker.stop(0, reason=signum.name)))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    running = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.wait_ready())
    try:
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and not stops:
            print(
                f"stepd worker ready ({len(worker.workflows)} workflows, server {worker.address})",
                flush=True,
            )
        await running
    finally:
        ready.cancel()
        for task in stops:
            await task
        await worker.stop()
    if threads.busy:
        # asyncio.run() would wait for the executor's threads, and the interpreter
        # joins them at exit: a stuck sync step would keep the process alive.
        logger.warning(
            "%d sync step(s) still running in threads; exiting without them", threads.busy
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
