"""Hands the server's finished RPC spans to its span export process.

With ``stepd serve --otel`` the server starts ``span_export.py`` as a child
process and writes its spans to the child's standard input in frames
(``span_frames.py``): at most every ``FLUSH_SECONDS``, or as soon as
``FLUSH_SPANS`` are waiting. Writing never blocks the event loop: the pipe is
asyncio's, and past ``MAX_BACKLOG_BYTES`` not yet taken by the child, or
once the child has exited, spans are dropped (counted in ``dropped``, and
logged once) rather than held.

Why a process: making the SDK's span objects and encoding them for OTLP
costs about 60 µs a span in Python; in the server that work shared the core
its event loop runs on and the GIL with it, and cost W1 about 15% of its
throughput. Here a span costs the server a tuple and a share of one write.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from stepd.server.telemetry import json_logs
from stepd.server.telemetry.span_frames import SpanRecord, encode

log = logging.getLogger("stepd.server")

#: The longest a finished span waits before it is written to the child.
FLUSH_SECONDS = 0.2
#: Spans that are written at once, without waiting for FLUSH_SECONDS.
FLUSH_SPANS = 512
#: Bytes written but not yet read by the child past which spans are dropped.
MAX_BACKLOG_BYTES = 16 * 1024 * 1024
#: Seconds ``close`` waits for the child to send what it holds and exit.
CLOSE_SECONDS = 3.0
#: The child's module.
EXPORT_MODULE = "stepd.server.telemetry.span_export"


class SpanRelay:
    """The span export process and the pipe to it (see the module docstring)."""

    def __init__(self, service_name: str) -> None:
        """The relay for spans of ``service_name`` (the default when
        ``OTEL_SERVICE_NAME`` is unset); the process starts with ``start``."""
        self._service_name = service_name
        self._process: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._pending: list[SpanRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._warned = False
        self.dropped = 0
        """Spans dropped: the child had exited or fell too far behind."""

    async def start(self) -> None:
        """Start the span export process (spans added before are written then)."""
        level, log_format = json_logs.settings()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            EXPORT_MODULE,
            self._service_name,
            level,
            log_format,
            stdin=asyncio.subprocess.PIPE,
        )
        self._stdin = self._process.stdin
        self._flush()

    @property
    def pid(self) -> int | None:
        """The span export process's id (None before ``start``)."""
        return self._process.pid if self._process is not None else None

    def add(self, record: SpanRecord) -> None:
        """Take one finished span (see the module docstring); never blocks."""
        pending = self._pending
        pending.append(record)
        if len(pending) >= FLUSH_SPANS:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        stdin = self._stdin
        if stdin is None or not self._pending:
            return  # not started: written by start()
        records, self._pending = self._pending, []
        if stdin.is_closing():
            self._drop(len(records), f"the span export process ended ({self._exit_status()})")
        elif stdin.transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            self._drop(len(records), "the span export process falls behind")
        else:
            stdin.write(encode(records))

    def _drop(self, count: int, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("dropping spans: %s", why)
        self.dropped += count

    def _exit_status(self) -> str:
        code = self._process.returncode if self._process is not None else None
        return "still running" if code is None else f"exit status {code}"

    async def close(self) -> None:
        """Write what is left, close the pipe and wait up to ``CLOSE_SECONDS`` for
        the child to export what it holds and exit (then end it: its spans are lost)."""
        process, stdin = self._process, self._stdin
        if process is None or stdin is None:
            return
        self._flush()
        stdin.close()
        try:
            await asyncio.wait_for(process.wait(), CLOSE_SECONDS)
        except TimeoutError:
            log.warning(
                "the span export process did not finish within %.0f s; the spans it held are lost",
                CLOSE_SECONDS,
            )
            process.kill()
            await process.wait()
            return
        if process.returncode != 0:
            log.warning("the span export process ended with exit status %s", process.returncode)
