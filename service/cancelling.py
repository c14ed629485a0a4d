"""Cancelling a background task for good.

On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives
just as what it waits for completes (CPython gh-86296). A loop built on it
then goes on as if nothing happened, and a ``close`` that cancelled it once
waits for it forever: the server's stop hung that way (the storage probe's
loop) until its time limit ended the process. ``cancel_and_wait`` cancels
again until the task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

#: Seconds between two cancellations of a task that did not end.
RETRY_SECONDS = 0.05


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` until it ends; raise what it raised, unless it was cancelled."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=RETRY_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task
