"""Live run streams (``WatchRun``): a run's history from a position, then every
entry as it is committed.

No watcher polls on its own schedule. The store tells ``RunWatchers.touched``
after each committed write about a run; a watcher of that run then reads the
history after its cursor (one indexed read per table) and the run's row, and
sends what is new. Many watchers of one run share one wake-up, and those at
the same position share one read per change; a run nobody watches costs one
dictionary lookup per write.

Bounds: a watcher holds at most one page of entries (``MAX_PAGE_SIZE`` entries,
about ``MAX_PAGE_BYTES``) and reads the next one only after the stream took the
last, so a slow reader slows its own stream (HTTP/2 flow control) and never
grows the server's memory. After ``keepalive_seconds`` without news it sends an
empty update (a dead caller is noticed then), and after ``lifetime_seconds`` it
ends; the caller resumes from the last cursor.

Several replicas on one PostgreSQL: a write committed by another replica does
not wake watchers here (except a run's end, which replicas announce), so each
watcher there also re-reads every ``poll_seconds`` (the replica poll interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from stepd.server.domain import HistoryCursor, HistoryEntry, HistoryPage, RunRecord
from stepd.server.engine.errors import NotFound
from stepd.server.engine.validation import shown
from stepd.server.store.base import Store

T = TypeVar("T")

#: A watcher sends an empty update after this long without news.
KEEPALIVE_SECONDS = 30.0
#: A stream ends (OK) after this long; the caller resumes from its last cursor.
LIFETIME_SECONDS = 30 * 60.0


class RunWatchers:
    """The runs watched on this server, each with one wake-up its watchers share."""

    def __init__(self) -> None:
        self._watched: dict[str, tuple[int, asyncio.Event]] = {}
        # Reads shared by the watchers of a run woken by one wake-up, by cursor.
        self._reads: dict[str, tuple[asyncio.Event, dict[HistoryCursor, asyncio.Future[Any]]]] = {}

    @contextlib.contextmanager
    def watching(self, run_id: str) -> Iterator[None]:
        """Count a watcher of ``run_id`` while the block runs."""
        count, event = self._watched.get(run_id, (0, asyncio.Event()))
        self._watched[run_id] = (count + 1, event)
        try:
            yield
        finally:
            count, event = self._watched[run_id]
            if count <= 1:
                del self._watched[run_id]
                self._reads.pop(run_id, None)
            else:
                self._watched[run_id] = (count - 1, event)

    def wake_up(self, run_id: str) -> asyncio.Event:
        """The event set by the next ``touched(run_id)`` (inside ``watching``)."""
        return self._watched[run_id][1]

    def touched(self, run_id: str) -> None:
        """A write about ``run_id`` committed: wake its watchers."""
        found = self._watched.get(run_id)
        if found is not None:
            count, event = found
            self._watched[run_id] = (count, asyncio.Event())
            self._reads.pop(run_id, None)
            event.set()

    async def shared_read(
        self,
        run_id: str,
        wake_up: asyncio.Event,
        cursor: HistoryCursor,
        read: Callable[[], Awaitable[T]],
    ) -> T:
        """``read()``, shared by every watcher of ``run_id`` at ``cursor`` that took
        the same wake-up: a read begun under a wake-up sees every write committed
        before it, and a later write sets that wake-up, so sharing it misses nothing.
        A thousand watchers of one run cost one read per change, not a thousand."""
        reads = self._reads.get(run_id)
        if reads is None or reads[0] is not wake_up:
            reads = self._reads[run_id] = (wake_up, {})
        shared = reads[1].get(cursor)
        if shared is None:
            shared = reads[1][cursor] = asyncio.ensure_future(read())
        # Shielded: one watcher that goes away does not cancel the others' read.
        return cast(T, await asyncio.shield(shared))

    @property
    def count(self) -> int:
        """How many runs are watched here."""
        return len(self._watched)


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """What one watch message carries: new entries as (position, entry), the run
    when its status or progress changed (else None), and the cursor after them."""

    entries: list[tuple[int, HistoryEntry]]
    run: RunRecord | None
    cursor: HistoryCursor


@dataclass(frozen=True, slots=True)
class WatchLimits:
    """How a watch is bounded: page size and bytes, keepalive, lifetime, and the
    poll interval on replicas (None on one server)."""

    page_size: int
    page_bytes: int
    keepalive_seconds: float = KEEPALIVE_SECONDS
    lifetime_seconds: float = LIFETIME_SECONDS
    poll_seconds: float | None = None


async def _read(
    store: Store, run_id: str, cursor: HistoryCursor, limits: WatchLimits
) -> tuple[RunRecord | None, HistoryPage | None]:
    """The run, then its history after ``cursor`` (when the run had ended then,
    the page holds its last entries)."""
    run = await store.get_run(run_id)
    if run is None:
        return None, None
    return run, await store.run_history_page(run_id, cursor, limits.page_size, limits.page_bytes)


def _shape(run: RunRecord) -> tuple[object, ...]:
    """What, when it changes, makes a watcher send the run again."""
    return (run.status, run.progress_json, run.held_error, run.workflow_version)


async def watch(
    store: Store,
    watchers: RunWatchers,
    run_id: str,
    cursor: HistoryCursor,
    limits: WatchLimits,
) -> AsyncIterator[WatchUpdate]:
    """A run's history after ``cursor`` as it is committed, until the run ended
    and every entry was sent, or the lifetime passed. NotFound for an unknown run."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + limits.lifetime_seconds
    sent_shape: tuple[object, ...] | None = None
    last_sent = loop.time()
    with watchers.watching(run_id):
        while True:
            wake_up = watchers.wake_up(run_id)
            # The run first: when it had ended, the page read after it holds its
            # last entries.
            read = functools.partial(_read, store, run_id, cursor, limits)
            run, page = await watchers.shared_read(run_id, wake_up, cursor, read)
            if run is None or page is None:
                raise NotFound(f"run {shown(run_id)} not found")
            entries = list(enumerate(page.entries, start=cursor.position + 1))
            cursor = page.cursor
            shape = _shape(run)
            changed = shape != sent_shape
            if entries or changed:
                sent_shape = shape
                yield WatchUpdate(entries, run if changed else None, cursor)
                last_sent = loop.time()
            if page.more:
                continue
            if run.status.is_terminal:
                return
            while True:
                now = loop.time()
                if now >= ends_at:
                    return
                if now >= last_sent + limits.keepalive_seconds:
                    yield WatchUpdate([], None, cursor)  # keepalive
                    last_sent = loop.time()
                    continue
                wait = min(last_sent + limits.keepalive_seconds, ends_at) - now
                if limits.poll_seconds is not None:
                    wait = min(wait, limits.poll_seconds)
                try:
                    await asyncio.wait_for(wake_up.wait(), wait)
                    break
                except TimeoutError:
                    if limits.poll_seconds is not None:
                        break  # re-read: another replica may have written
