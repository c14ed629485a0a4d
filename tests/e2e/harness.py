"""Real ``stepd`` server and worker processes for end-to-end tests and the benchmark.

Each process runs in its own process group with its output in a log file;
teardown sends SIGTERM to the group, waits a bounded time, then SIGKILLs it.
Nothing here imports pytest, so ``bench/run.py`` uses it too.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]

#: Environment variable naming the directory where test steps record side effects.
MARKS_ENV = "STEPD_E2E_MARKS"
#: Seconds a test worker lets in-flight steps finish on SIGTERM.
WORKER_SHUTDOWN_GRACE = 3.0

SERVER_READY = re.compile(r"^stepd serving on (\S+):(\d+) \(database (.*)\)$")
HTTP_READY = re.compile(r"^stepd http on (\S+)$")
WORKER_READY = re.compile(r"^stepd worker ready \((\d+) workflows?, server (\S+)\)$")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_LIVE: set[ManagedProcess] = set()


def console_script(name: str, module: str) -> list[str]:
    """Return the argv prefix that runs an installed console script.

    Prefers the script beside the running interpreter (the active venv), then
    PATH, then ``python -c`` importing the entry point.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


# Runs first in each child: ask Linux to SIGKILL it when the parent dies (even by
# SIGKILL), then exec the real command. (A preexec_fn would do the same, but runs
# Python's at-fork hooks in the child, where grpc's poller threads can abort.)
_DIE_WITH_PARENT = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); os.execvp(sys.argv[1], sys.argv[1:])"
)


def rest_of_output(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Wait for ``process`` to end and return the rest of its stdout and stderr (text
    pipes; "" for one not piped).

    Use it instead of ``communicate(timeout=...)`` once a line has been read: with a
    timeout, ``communicate`` reads the pipes' descriptors directly, so what an earlier
    ``readline()`` buffered past its line is lost. Raises ``TimeoutExpired`` (the
    caller kills the process, which ends the reads). Closes the pipes it read.
    """
    with ThreadPoolExecutor(2) as pool:
        reads = [
            pool.submit(pipe.read) if pipe else None for pipe in (process.stdout, process.stderr)
        ]
        process.wait(timeout)
        out, err = (read.result(timeout) if read else "" for read in reads)
    for pipe in (process.stdout, process.stderr):
        if pipe:
            pipe.close()
    return out, err


def _launcher() -> list[str]:
    """The argv prefix that makes a child die with this process (Linux only)."""
    if sys.platform.startswith("linux"):
        return [sys.executable, "-S", "-c", _DIE_WITH_PARENT]
    return []


class ProcessStartError(RuntimeError):
    """A process exited or stayed silent before printing its ready line."""


class ManagedProcess:
    """A child process in its own process group, output captured to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self._start_offset = self._log.tell()  # ready lines count only from here
        self.popen = subprocess.Popen(
            [*_launcher(), *self.argv],
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while running."""
        return self.popen.poll()

    def log_text(self) -> str:
        """Everything the process printed so far."""
        try:
            with self.log_path.open("rb") as file:
                file.seek(self._start_offset)
                return file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last lines the process printed."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_line(
        self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT
    ) -> re.Match[str]:
        """Wait until a printed line matches ``pattern`` (searched from the start)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                found = pattern.search(line)
                if found:
                    return found
            if self.popen.poll() is not None:
                raise ProcessStartError(
                    f"{self.name} exited with {self.popen.returncode} before printing "
                    f"{pattern.pattern!r}; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} printed no {pattern.pattern!r} in {timeout:.0f}s; "
                    f"log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        """Send a signal to the whole process group (ignored once it is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the group and wait; SIGKILL it when it outlives ``timeout``.

        Returns the exit code (negative for a signal, as in subprocess).
        """
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout)
        self._finish()
        return self.popen.returncode

    def kill(self) -> int:
        """SIGKILL the group at once (a crash) and reap the process."""
        self.signal(signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT)
        self._finish()
        return self.popen.returncode

    def _finish(self) -> None:
        # Leftovers of the group (if the child spawned any) die with it.
        self.signal(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        _LIVE.discard(self)


@dataclass
class Server:
    """A running ``stepd serve`` process."""

    process: ManagedProcess
    address: str
    database: str  # a SQLite file path or a PostgreSQL URL

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.address.rsplit(":", 1)[1])

    @property
    def http_url(self) -> str:
        """The base URL of its HTTP listener (probes, metrics, webhooks)."""
        return self.process.wait_for_line(HTTP_READY)[1]


class Stack:
    """Starts servers and workers for one test (or one benchmark repetition).

    ``close()`` stops every process it started: workers first, then servers.
    """

    def __init__(self, workdir: Path, *, marks_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.marks_dir = marks_dir
        self.processes: list[ManagedProcess] = []
        # Exit codes of the processes close() stopped, kept across calls.
        self._exit_codes: dict[str, int] = {}
        self._count = 0

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for child processes."""
        env = dict(os.environ)
        if self.marks_dir is not None:
            env[MARKS_ENV] = str(self.marks_dir)
        env.update(extra or {})
        return env

    def _log_path(self, name: str) -> Path:
        self._count += 1
        return self.workdir / f"{self._count:02d}-{name}.log"

    def start_server(
        self,
        database: Path | str | None = None,
        *,
        address: str = "127.0.0.1:0",
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Server:
        """Start ``stepd serve`` (on a free port by default) and wait until it listens."""
        database = str(database or self.workdir / "stepd.db")
        args = list(args)
        if not address.endswith(":0") and not any(a.startswith("--http-address") for a in args):
            # "auto" would listen on the gRPC port + 1, which another test's
            # server may hold by now: a restart at a fixed address takes any free one.
            args += ["--http-address", f"{address.rsplit(':', 1)[0]}:0"]
        argv = [
            *console_script("stepd", "stepd.server.cli"),
            "serve",
            "--address",
            address,
            "--database",
            database,
            *args,
        ]
        process = ManagedProcess("server", argv, self._log_path("server"), env=self.env(env))
        self.processes.append(process)
        ready = process.wait_for_line(SERVER_READY)
        return Server(process=process, address=f"{ready[1]}:{ready[2]}", database=database)

    def start_replicas(
        self, database: str, count: int, *, args: Iterable[str] = ()
    ) -> list[Server]:
        """Start ``count`` servers on one PostgreSQL database (replicas), each on
        a free port."""
        return [self.start_server(database, args=args) for _ in range(count)]

    def start_worker(
        self,
        server: Server | str,
        modules: Sequence[str] = ("tests.e2e.workflows",),
        *,
        concurrency: int | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        args: Iterable[str] = (),
    ) -> ManagedProcess:
        """Start ``stepd-worker MODULES --server ADDRESS`` and wait until it is ready.

        ``server`` may be a gRPC target naming several replicas
        (``ipv4:127.0.0.1:5001,127.0.0.1:5002``, see ``replicas_target``)."""
        address = server.address if isinstance(server, Server) else server
        argv = [*console_script("stepd-worker", "stepd.cli"), *modules, "--server", address]
        # Shorter than close()'s SIGTERM wait, so a drained worker always exits by itself.
        argv += ["--shutdown-grace", str(WORKER_SHUTDOWN_GRACE)]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        argv += list(args)
        process = ManagedProcess("worker", argv, self._log_path("worker"), env=self.env(env))
        self.processes.append(process)
        if wait:
            process.wait_for_line(WORKER_READY)
        return process

    def close(self) -> dict[str, int]:
        """Stop every live process (workers first).

        Returns the exit codes of the processes that were still running (at
        this call or an earlier one), by ``name-pid``: 0 for each one that
        stopped cleanly on SIGTERM.
        """
        codes = self._exit_codes
        ordered = [p for p in self.processes if p.name != "server"] + [
            p for p in self.processes if p.name == "server"
        ]
        for process in ordered:
            running = process.returncode is None
            code = process.stop()
            if running:
                codes[f"{process.name}-{process.pid}"] = code
        return dict(codes)


def replicas_target(servers: Sequence[Server]) -> str:
    """A gRPC target naming several replicas, in order: the worker connects to the
    first that answers and moves on to the next when it goes away."""
    return "ipv4:" + ",".join(server.address for server in servers)


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: no child process group outlives the interpreter."""
    for process in list(_LIVE):
        process.signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.popen.wait(STOP_TIMEOUT)
        process._finish()


def read_marks(marks_dir: Path, tag: str) -> list[str]:
    """Return the side-effect lines that test steps recorded for ``tag``."""
    path = marks_dir / f"{tag}.log"
    if not path.exists():
        return []
    return path.read_text().splitlines()


def release(marks_dir: Path, tag: str) -> None:
    """Let the blocking steps of ``tag`` finish."""
    (marks_dir / f"{tag}.release").touch()


async def eventually(
    predicate: Callable[[], bool], *, within: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)
