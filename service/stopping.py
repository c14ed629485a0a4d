"""A bounded stop: the server exits within a known time whatever it waits for.

A graceful stop lets calls in flight finish, closes the engine and the store.
Should any part of that hang (a store that no longer answers, a stream that
ignores cancellation), the process must still end: an orchestrator's SIGKILL
after its own timeout tells nobody what hung. ``stop_within`` gives the stop a
limit and, past it, logs what every task was waiting on and ends the process.
A second SIGTERM or SIGINT during the stop ends it at once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import Awaitable

log = logging.getLogger("stepd.server")

#: Seconds a stop may take beyond the grace given to calls in flight.
STOP_MARGIN_SECONDS = 4.0
#: Exit status of a stop that overran its limit or was cut short.
FORCED_EXIT_STATUS = 1


async def stop_within(stop: Awaitable[None], grace: float) -> None:
    """Await ``stop``; when it is not done within ``grace`` plus a margin, log
    where each task waits and end the process with ``FORCED_EXIT_STATUS``."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _exit_now, sig)
    limit = grace + STOP_MARGIN_SECONDS
    stopping = asyncio.ensure_future(stop)
    done, _ = await asyncio.wait({stopping}, timeout=limit)
    if stopping in done:
        stopping.result()
        return
    log.error("stopping took longer than %.0f s; exiting now. Tasks:\n%s", limit, _task_stacks())
    _exit(FORCED_EXIT_STATUS)


def _exit_now(sig: signal.Signals) -> None:
    log.warning("%s while stopping: exiting now", sig.name)
    _exit(FORCED_EXIT_STATUS)


def _exit(status: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)


def _task_stacks() -> str:
    """Where each task waits: its coroutine's innermost frames (never raises)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        try:
            frames = task.get_stack(limit=6)
            where = " <- ".join(
                f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"
                for frame in reversed(frames)
            )
            out.write(f"  {task.get_name()}: {where or task.get_coro()!r}\n")
        except Exception as exc:  # a frame of a C extension, say
            out.write(f"  {task.get_name()}: ({type(exc).__name__})\n")
    return out.getvalue()
