"""Replicas: several ``stepd serve`` processes sharing one PostgreSQL database.

Each replica keeps its own workers' streams and ready queues. What one
replica does that another must hear about travels as a notification on
``stepd.server.store.notify``'s channel, sent right after the commit:

* ``r`` (ready): a run became ready here (triggered, woken by a signal, hook,
  event, timer or child, re-queued) and no worker here has room for it now.
  Replicas with a worker serving its workflow queue it; the claim (a
  conditional write) hands it out once.
* ``e`` (ended): a run ended here. A replica answers its ``GetRun(wait=true)``
  callers, and stops a worker of its own that still holds the run (it was
  cancelled or expired through another replica).

Notifications only shorten the wait. A replica whose workers have room and
nothing queued polls the database for ready runs every ``poll_interval``
seconds, so a lost notification (a crash between commit and notify, a dropped
connection) delays a run by at most that much; as often, one read checks
whether runs that ``GetRun`` callers wait for here ended. What a replica
that died between a run's end and its follow-up left undone (waking the
parent of a child, cancelling an ended run's children) is redone by every
replica's sweep every few seconds, the same recovery a single server does
once at start. On SQLite there is one server and none of this runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from stepd.server.cancelling import cancel_and_wait
from stepd.server.domain import RunRecord
from stepd.server.engine.dispatcher import Dispatcher
from stepd.server.engine.waiters import RunWaiters
from stepd.server.store.base import Store
from stepd.server.store.errors import StoreUnavailableError
from stepd.server.store.notify import MAX_PAYLOAD_BYTES, NotifyChannel

log = logging.getLogger("stepd.replicas")

#: Timers (sleeps, retries, expiry, delayed starts, cron) are loaded this far
#: ahead on replicas, so a timer a dead replica held fires at most half of it late.
REPLICA_TIMER_HORIZON_MS = 10_000
#: Seconds between sweeps for the follow-ups of run ends that a replica did not
#: live to do (wake the parent of an ended child, cancel an ended run's children).
FOLLOW_UP_SWEEP_SECONDS = 5.0
#: Waited-for runs checked per read.
WAITED_CHUNK = 500

#: Acts on a run another replica ended (by id): answer waiters, stop its worker here.
EndedElsewhere = Callable[[str], Coroutine[Any, Any, None]]
#: Redoes the follow-ups of run ends that a replica did not live to do.
RecoverFollowUps = Callable[[], Coroutine[Any, Any, None]]


class ReplicaLink:
    """Tells the other replicas what happened here and acts on what they tell it.

    Subscribe ``ready`` and ``ended`` to the lifecycle. Runs the others made
    ready go to the ``dispatcher``; ends they report to ``ended_elsewhere``;
    ``waiters`` are the ``GetRun(wait=true)`` callers the poll checks for;
    ``recover`` is the sweep for follow-ups of dead replicas.
    """

    def __init__(
        self,
        channel: NotifyChannel | None,
        poll_interval: float,
        store: Store,
        dispatcher: Dispatcher,
        waiters: RunWaiters,
        *,
        ended_elsewhere: EndedElsewhere,
        recover: RecoverFollowUps,
    ) -> None:
        self._channel = channel
        self._store = store
        self._dispatcher = dispatcher
        self._waiters = waiters
        self._ended_elsewhere = ended_elsewhere
        self._recover = recover
        self.poll_interval = poll_interval
        self._id = uuid.uuid4().hex[:12]
        self._outbox: list[list[Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._late_gate: Callable[[RunRecord], bool] | None = None

    def gate_late_starts(self, gate: Callable[[RunRecord], bool]) -> None:
        """Let ``gate`` take over a polled run with a start rate limit (True: it
        did), as the lifecycle does for runs made ready here."""
        self._late_gate = gate

    @property
    def replica_id(self) -> str:
        """This replica's id (random, per process), as other replicas hear of it."""
        return self._id

    @property
    def replicated(self) -> bool:
        """True on PostgreSQL, where other replicas may share the database."""
        return self._channel is not None

    async def start(self) -> None:
        """Listen to the other replicas and start the fallback poll."""
        if self._channel is None:
            return
        await self._channel.start(self._received, self._poll_now.set)
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        """Send what is queued, stop polling and listening."""
        if self._channel is None:
            return
        if self._poller is not None:
            with contextlib.suppress(Exception):
                await cancel_and_wait(self._poller)
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()

    # -- outgoing ----------------------------------------------------------------

    def ready(self, run: RunRecord) -> None:
        """A run became ready here (after its commit and its push to the local
        queue); the others are told unless a worker here takes it at once."""
        key = (run.workflow_name, run.workflow_version)
        if self._channel is not None and not self._dispatcher.can_take_now(key):
            resumed = 1 if run.dispatch_count > 0 else 0
            item = ["r", run.workflow_name, run.workflow_version, run.run_id, resumed]
            if run.priority or run.concurrency_key is not None:
                item += [run.priority, run.concurrency_key]
            self._send(item)

    def ended(self, run: RunRecord) -> None:
        """A run ended here (after its commit)."""
        if self._channel is not None:
            self._send(["e", run.run_id])

    def _send(self, item: list[Any]) -> None:
        self._outbox.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Send everything queued meanwhile, several items per notification."""
        assert self._channel is not None
        await asyncio.sleep(0)  # let the current burst of commits queue up
        while self._outbox:
            items, self._outbox = self._outbox, []
            try:
                await self._channel.send(_payloads(self._id, items))
            except Exception as exc:  # the others' poll finds the runs instead
                log.warning("notifying the other replicas failed: %s", exc)

    # -- incoming ------------------------------------------------------------

    def _received(self, payload: str) -> None:
        message = json.loads(payload)
        if message.get("from") == self._id:
            return
        dispatcher = self._dispatcher
        for item in message.get("items", ()):
            if item[0] == "r":
                _, name, version, run_id, resumed, *ranked = item
                priority, fair_key = ranked if len(ranked) == 2 else (0, None)
                if dispatcher.serves((name, version)):
                    dispatcher.push(
                        name,
                        version,
                        run_id,
                        resumed=bool(resumed),
                        priority=priority,
                        fair_key=fair_key,
                    )
            elif item[0] == "e":
                self._spawn(self._ended_elsewhere(item[1]))

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the fallback poll -------------------------------------------------------

    async def _poll_forever(self) -> None:
        assert self._channel is not None
        loop = asyncio.get_running_loop()
        swept_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self.poll_interval)
            self._poll_now.clear()
            try:
                await self._channel.check()
                await self.poll()
                await self.check_waited()
                if loop.time() - swept_at >= FOLLOW_UP_SWEEP_SECONDS:
                    swept_at = loop.time()
                    await self._recover()
            except StoreUnavailableError as exc:
                log.warning("polling for ready runs: storage unavailable (%s)", exc)
            except Exception:
                log.exception("polling for ready runs failed")

    def poll_soon(self) -> None:
        """Poll now rather than at the next interval (a worker connected here)."""
        if self._channel is not None:
            self._poll_now.set()

    async def poll(self) -> int:
        """Queue ready runs for workers that have room and nothing queued; return
        how many were found."""
        dispatcher = self._dispatcher
        served, slots = dispatcher.idle_demand()
        if slots <= 0:
            return 0
        found = await self._store.ready_runs(served, slots)
        for run in found:
            name, version = run.workflow_name, run.workflow_version
            if run.rate_limit is not None and self._late_gate is not None and self._late_gate(run):
                continue
            if run.held_error is not None:  # only to workers that have not refused it
                dispatcher.hold(name, version, run.run_id, refused_by="")
            else:
                dispatcher.push(
                    name,
                    version,
                    run.run_id,
                    resumed=run.dispatch_count > 0,
                    priority=run.priority,
                    fair_key=run.concurrency_key,
                )
        return len(found)

    async def check_waited(self) -> None:
        """Answer callers waiting for runs that ended without this replica hearing
        of it (a lost notification): one read per 500 waited runs."""
        waited = self._waiters.run_ids
        for start in range(0, len(waited), WAITED_CHUNK):
            for run in await self._store.ended_runs(waited[start : start + WAITED_CHUNK]):
                self._waiters.answer(run)


def _payloads(sender: str, items: list[list[Any]]) -> list[str]:
    """``items`` as notification payloads of at most MAX_PAYLOAD_BYTES each."""
    head = len(json.dumps({"from": sender, "items": []}))
    payloads: list[str] = []
    chunk: list[list[Any]] = []
    size = head
    for item in items:
        encoded = len(json.dumps(item).encode()) + 2
        if chunk and size + encoded > MAX_PAYLOAD_BYTES:
            payloads.append(json.dumps({"from": sender, "items": chunk}))
            chunk, size = [], head
        chunk.append(item)
        size += encoded
    if chunk:
        payloads.append(json.dumps({"from": sender, "items": chunk}))
    return payloads
