"""Concurrency per key: declaring limits, admitting waiting runs, saying why one waits.

The store admits a new run in the transaction that inserts it
(``stepd.server.store.concurrency``); a run it did not admit stays PENDING
and the lifecycle does not queue it but tells this helper (``run_waiting``).
The write that ends a limited run (it completes, fails or is cancelled)
checks its key in the same transaction (the store's ``on_key_checked``
listener, ``key_checked`` here): the oldest waiting runs the key has room for
are admitted and made ready, and under ``cancel_in_progress`` the runs a newer
one replaces are cancelled (their end admits it). A run that waits for
another reason than its insert (a retry, a debounced trigger folded into it)
is followed by a check in a store write of its own (``run_waiting``), as is a
run ended by another write whose key is known to have waiting runs
(``run_ended``). A sweep every ``sweep_seconds`` (and at start) checks every
key with waiting runs: it covers runs that waited or ended on another
replica, and keys left with room by a write that does not check them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stepd.server.cancelling import cancel_and_wait
from stepd.server.clock import SYSTEM_CLOCK, Clock
from stepd.server.domain import RunRecord, RunStatus
from stepd.server.domain_schedules import WorkflowDeclaration
from stepd.server.engine.errors import FailedPrecondition, InvalidArgument, NotFound
from stepd.server.engine.validation import check_name
from stepd.server.store.base import Store
from stepd.server.store.concurrency import KeyCheck
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.engine.concurrency")

#: Longest key path a workflow may declare.
MAX_KEY_PATH_LENGTH = 256
#: Most keys with waiting runs one sweep checks.
SWEEP_KEYS = 1000
#: Most keys checked at once.
CHECK_BATCH = 64

MakeReady = Callable[[RunRecord], None]
Cancel = Callable[[str, str], Awaitable[Any]]


class ConcurrencyControl:
    """Admits runs waiting under concurrency limits and cancels replaced ones.

    ``make_ready`` queues an admitted run (the lifecycle's); ``cancel`` cancels
    a run with a reason (the lifecycle's).
    """

    def __init__(
        self,
        store: Store,
        make_ready: MakeReady,
        cancel: Cancel,
        *,
        sweep_seconds: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._make_ready = make_ready
        self._cancel = cancel
        self._sweep_seconds = sweep_seconds
        self._clock = clock
        self._keys: set[tuple[str, str]] = set()  # to check now
        # Keys seen with waiting runs (here, or by a sweep): a run of one of them
        # that ends is followed by a check; other ends need none.
        self._waiting: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cancelling: set[asyncio.Task[None]] = set()

    # -- declarations ----------------------------------------------------------

    async def declare(self, declarations: Sequence[WorkflowDeclaration]) -> None:
        """Store the limits a worker's workflows declare (a workflow declaring
        none has none any more). InvalidArgument for a bad limit, or for two
        workflows giving one limit name two settings."""
        specs = {}
        for declaration in declarations:
            spec = declaration.concurrency
            where = f"hello: workflow {declaration.name!r}: concurrency"
            if spec is not None:
                if spec.limit < 1:
                    raise InvalidArgument(f"{where}.limit must be at least 1")
                check_name(f"{where}.name", spec.name, required=True)
                check_name(f"{where}.key_path", spec.key_path, max_length=MAX_KEY_PATH_LENGTH)
            specs[declaration.name] = spec
        if not specs:
            return
        conflict = await self._store.declare_concurrency(specs, self._clock.now_ms())
        if conflict is not None:
            raise InvalidArgument(f"hello: {conflict}")

    # -- admission -------------------------------------------------------------

    def run_waiting(self, run: RunRecord) -> None:
        """A run waits for room at its key: check the key soon, unless the run is
        as its insert left it (the insert found no room under the key's lock, and
        the write that ends one of the key's runs admits it)."""
        if run.concurrency_name is None or run.concurrency_key is None:
            return
        name_key = (run.concurrency_name, run.concurrency_key)
        self._waiting.add(name_key)
        if run.update_time != run.create_time or run.dispatch_count or run.retry_count:
            self._check_soon(name_key)

    def run_ended(self, run: RunRecord) -> None:
        """A run ended here: when runs are known to wait at its key, check it
        soon (other keys are left to the sweep, which finds every waiting run)."""
        if run.concurrency_name is None or run.concurrency_key is None:
            return
        name_key = (run.concurrency_name, run.concurrency_key)
        if name_key in self._waiting:
            self._check_soon(name_key)

    def _check_soon(self, name_key: tuple[str, str]) -> None:
        self._keys.add(name_key)
        self._wake.set()

    def start(self) -> None:
        """Start checking keys (a sweep of every waiting key first)."""
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        """Stop checking keys."""
        for task in list(self._cancelling):
            task.cancel()
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        sweep = True
        while True:
            try:
                if sweep:
                    found = await self._store.concurrency_waiting_keys(SWEEP_KEYS)
                    self._waiting.update(found)
                    self._keys.update(found)
                while self._keys:
                    # Checked side by side: their writes share commits.
                    batch = [self._keys.pop() for _ in range(min(len(self._keys), CHECK_BATCH))]
                    outcomes = await asyncio.gather(
                        *(self._check(name_key) for name_key in batch), return_exceptions=True
                    )
                    for name_key, outcome in zip(batch, outcomes, strict=True):
                        if isinstance(outcome, Exception):
                            log.error("checking concurrency key %r failed: %s", name_key, outcome)
            except StoreUnavailableError as exc:
                log.warning("checking concurrency keys: storage unavailable (%s)", exc)
            except Exception:
                log.exception("checking concurrency keys failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._sweep_seconds)
                sweep = False
            except TimeoutError:
                sweep = True

    async def _check(self, name_key: tuple[str, str]) -> None:
        name, key = name_key
        outcome = await self._store.check_concurrency_key(name, key, self._clock.now_ms())
        self._settle(name_key, outcome)
        await self._cancel_replaced(name_key, outcome.to_cancel)

    def key_checked(self, name: str, key: str, outcome: KeyCheck) -> None:
        """The store checked a key in the write that ended one of its runs (its
        ``on_key_checked`` listener): queue what it admitted, cancel what it replaced."""
        name_key = (name, key)
        self._settle(name_key, outcome)
        if outcome.to_cancel:
            task = asyncio.create_task(self._cancel_replaced(name_key, outcome.to_cancel))
            self._cancelling.add(task)
            task.add_done_callback(self._cancelling.discard)

    def _settle(self, name_key: tuple[str, str], outcome: KeyCheck) -> None:
        if not outcome.waiting:
            self._waiting.discard(name_key)
        for run in outcome.admitted:
            self._make_ready(run)

    async def _cancel_replaced(self, name_key: tuple[str, str], run_ids: Sequence[str]) -> None:
        name, key = name_key
        reason = (
            f"replaced by a newer run of key {key!r} "
            f"(concurrency limit {name!r}, strategy cancel_in_progress)"
        )
        for run_id in run_ids:
            try:
                await self._cancel(run_id, reason)
            except (FailedPrecondition, NotFound):  # it ended meanwhile
                pass
            except Exception as exc:
                log.error("cancelling run %s replaced at key %r failed: %s", run_id, name_key, exc)

    # -- what GetRun says --------------------------------------------------------

    async def waiting_reason(self, run: RunRecord) -> str:
        """Why a pending run is not handed out ("" when it is not waiting for room)."""
        if run.admitted or run.status is not RunStatus.PENDING or run.concurrency_name is None:
            return ""
        ahead, active, limit = await self._store.concurrency_queue_position(run)
        return (
            f"queued behind key {run.concurrency_key!r} of limit {run.concurrency_name!r}: "
            f"{ahead} ahead ({active} active of {limit})"
        )
