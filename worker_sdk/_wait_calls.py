"""The durable waits workflow code calls: sleeps, signals, events, hooks, a child's end
and a retry's backoff.

Each call gets its wait keys synchronously: sleeps (``ctx.sleep``) ``sleep:1``,
``sleep:2``, ...; signal waits (``ctx.wait_for_signal``) ``signal:1``, ... and, with
a timeout, the timer ``signal:N:timeout`` beside the signal wait; event waits
(``ctx.wait_for_event``) ``event:1``, ... (and ``event:N:timeout``), with ``since``
taken at the call and recorded at once as the internal journal entry
``event:N:since`` (a ``record_step`` whose result is ``since`` in Unix ms): the wait
proceeds only once the server acknowledged it, and a replay reads it back, so the
wait begins where it first began even when the run is handed out again before it
was ever suspended. Hook waits (``ctx.wait_for_hook``) use the key ``hook:N`` that
``ctx.create_hook`` gave the hook (and ``hook:N:timeout``); the hook's token is
derived from the RunTask's ``hook_secret`` and the key, the same on every replay.
A child's end is the wait ``child:N``, a retry's backoff the timer ``retry:KEY:N``.

A call registers its waits as pending and awaits them; the run's quiescence check
delivers a met wait of the journal to it, or suspends the run (see ``_replay.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from pydantic import TypeAdapter

from stepd import _commands as commands
from stepd._acks import Acks
from stepd._children import child_result
from stepd._control import LeaseLost, RunAbandoned, RunControl
from stepd._hooks import Hook, hook_token
from stepd._journal import Journal
from stepd._keys import Keys
from stepd._policy import RetryPolicy
from stepd._serde import loads, payload_text
from stepd._settle import Settler
from stepd._waits import EventWait, Met, Waits, WaitSpec
from stepd.errors import NonDeterminismError, StepdError, WaitTimeoutError, WorkflowContextError
from stepd.v1 import types_pb2

logger = logging.getLogger("stepd.worker")


@dataclass(frozen=True, slots=True)
class _Since:
    """When an event wait began (Unix ns, whole ms) and, when this execution recorded
    it, the answer to its ``record_step`` (``event:N:since``); ``unsent`` when it could
    not be sent (the run was ending)."""

    ns: int
    answer: asyncio.Future[commands.Result] | None = None
    unsent: bool = False


def _since_ns(key: str, record: types_pb2.StepRecord) -> int:
    """The start of an event wait (Unix ns) from its ``event:N:since`` record (Unix ms)."""
    try:
        since_ms = loads(payload_text(record.result))
        if isinstance(since_ms, bool) or not isinstance(since_ms, int):
            raise ValueError(since_ms)
    except (ValueError, StepdError) as exc:
        raise NonDeterminismError(
            f"the journal entry {key} holds {payload_text(record.result)!r}, not the start "
            "of an event wait in Unix ms"
        ) from exc
    return since_ms * 1_000_000


def _timed_out(timeout_ns: int | None) -> tuple[float | None, str]:
    """A wait's timeout in seconds and how a message says it."""
    timeout = None if timeout_ns is None else timeout_ns / 1e9
    return timeout, "in time" if timeout is None else f"within {timeout:g} s"


class WaitCalls:
    """Makes the durable waits of one run."""

    __slots__ = (
        "_acks",
        "_clock",
        "_hook_secret",
        "_hooks_waited",
        "_journal",
        "_keys",
        "_run",
        "_settler",
        "_waits",
    )

    def __init__(
        self,
        run: RunControl,
        journal: Journal,
        keys: Keys,
        acks: Acks,
        settler: Settler,
        waits: Waits,
        hook_secret: bytes,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._clock = clock  # the time in epoch ns: when sleeps and timeouts end
        self._run = run
        self._journal = journal
        self._keys = keys
        self._acks = acks
        self._settler = settler
        self._waits = waits
        self._hook_secret = hook_secret
        self._hooks_waited: set[str] = set()  # hooks a wait_for_hook call took

    # -- the calls ------------------------------------------------------------------

    def sleep(
        self, *, duration_ns: int | None = None, until_ns: int | None = None
    ) -> Coroutine[Any, Any, None]:
        """Assign the call its wait key now (``sleep:N``). A sleep that ends now or earlier
        returns at once, unless the journal holds it as met; any other is a pending wait."""
        key = self._keys.key("sleep")
        self._settler.touch()
        now = self._clock()
        fire_ns = until_ns if until_ns is not None else now + (duration_ns or 0)
        if fire_ns <= now and not self._journal.is_met(key):
            return self._no_wait()
        return self._sleep(self._spec(key, fire_ns=fire_ns))

    def signal(
        self, name: str, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its wait keys now: ``signal:N`` for the signal and, with a
        timeout, ``signal:N:timeout`` for a timer beside it (first of the two wins)."""
        key = self._keys.key("signal")
        self._settler.touch()
        specs = [self._spec(key, signal=name)]
        if timeout_ns is not None:
            specs.append(self._spec(f"{key}:timeout", fire_ns=self._clock() + timeout_ns))
        return self._signal(key, name, specs, timeout_ns, adapter)

    def event(
        self, name: str, *, match_json: str, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its wait keys now: ``event:N`` for the event and, with a
        timeout, the timer ``event:N:timeout`` beside it (fired ``timeout`` after
        ``since``).

        ``since`` is the time of this call, recorded at once as ``event:N:since``
        (``record_step``, not awaited here; the wait proceeds once it is
        acknowledged), or read back from the journal on a replay."""
        key = self._keys.key("event")
        self._settler.touch()
        specs = [self._spec(key, event=EventWait(name, match_json, 0))]
        if timeout_ns is not None:
            specs.append(self._spec(f"{key}:timeout"))
        since = self._event_since(f"{key}:since")
        return self._event(key, name, match_json, specs, timeout_ns, adapter, since)

    def create_hook(self) -> Hook:
        """Assign the hook its wait key now (``hook:N``) and derive its token from the
        run's hook secret: the same key and token on every replay."""
        key = self._keys.key("hook")
        self._settler.touch()
        run_id = self._run.run_id
        if not self._hook_secret:
            raise StepdError(
                f"run {run_id}: the server sent no hook secret, so it does not serve "
                "hooks; upgrade the stepd server"
            )
        return Hook(key=key, token=hook_token(self._hook_secret, run_id, key), run_id=run_id)

    def hook(
        self, hook: Hook, *, timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Coroutine[Any, Any, Any]:
        """Wait on the hook's key (``hook:N``) and, with a timeout, the timer
        ``hook:N:timeout`` beside it (first of the two wins). A hook is waited on once."""
        key = hook.key
        if hook.run_id != self._run.run_id or not key.startswith("hook:"):
            raise WorkflowContextError(f"{key} of run {hook.run_id} is not a hook of this run")
        if key in self._hooks_waited:
            raise WorkflowContextError(
                f"{key} was waited on already: a hook executes once and expires when its "
                "wait ends; create a new hook to wait again"
            )
        self._hooks_waited.add(key)
        self._settler.touch()
        specs = [self._spec(key, hook=True)]
        if timeout_ns is not None:
            specs.append(self._spec(f"{key}:timeout", fire_ns=self._clock() + timeout_ns))
        return self._hook(key, specs, timeout_ns, adapter)

    async def child(self, key: str, child_id: str, adapter: TypeAdapter[Any]) -> Any:
        """Wait durably (``child:N``) until the child ends; its result or ChildFailedError."""
        self._settler.touch()
        _, result = await self.wait((self._spec(key, child=child_id),))
        return child_result(key, payload_text(result.payload), adapter)

    async def retry_wait(self, key: str, failed: types_pb2.StepRecord, policy: RetryPolicy) -> None:
        """Wait durably until the attempt after ``failed`` may start: a timer wait
        ``retry:KEY:N`` that the server keeps, so a crash changes nothing. The delay
        runs from the failed attempt's recorded end."""
        end_ns = failed.end_time.ToNanoseconds() if failed.HasField("end_time") else self._clock()
        delay = policy.delay_after(failed.attempt, f"{self._run.run_id}:{key}")
        fire_ns = end_ns + int(delay * 1e9)
        wait_key = f"retry:{key}:{failed.attempt}"
        self._settler.touch()
        if fire_ns <= self._clock() and not self._journal.is_met(wait_key):
            self._run.check_live()
            return
        await self._sleep(self._spec(wait_key, fire_ns=fire_ns))

    async def wait(self, specs: tuple[WaitSpec, ...] | list[WaitSpec]) -> Met:
        """Register the waits of one call as pending and wait until one of them is met."""
        self._run.check_live()
        future: asyncio.Future[Met] = asyncio.get_running_loop().create_future()
        waits = self._waits
        waits.add(specs, future)
        settler = self._settler
        settler.touch()
        settler.check()
        try:
            # Resolved with a met wait of the journal when the run is quiescent.
            # Otherwise it ends with RunSuspended once the run is suspended (the
            # wake-up is a new run task that replays it), or is cancelled with the run
            # or by the workflow.
            return await future
        finally:
            waits.remove(specs)
            settler.touch()
            settler.check()

    # -- what each call awaits --------------------------------------------------------

    def _spec(
        self,
        key: str,
        *,
        fire_ns: int = 0,
        signal: str | None = None,
        event: EventWait | None = None,
        hook: bool = False,
        child: str | None = None,
    ) -> WaitSpec:
        """A wait's description, numbered in call order."""
        return WaitSpec(key, self._keys.count("wait"), fire_ns, signal, event, hook, child)

    async def _no_wait(self) -> None:
        self._run.check_live()

    async def _sleep(self, spec: WaitSpec) -> None:
        key, _ = await self.wait((spec,))
        not_before = self._journal.not_before(key)
        if not_before is None:
            return
        # The server met the sleep early, so that the run is here in time: go on at
        # the time itself. Meanwhile the run counts as busy (not quiescent).
        with self._run.in_flight():
            await asyncio.sleep(max(not_before - time.monotonic(), 0.0))
            await self._run.wait_for_room()  # a slot of the worker's, if it waited without
        self._run.check_live()

    async def _signal(
        self,
        key: str,
        name: str,
        specs: list[WaitSpec],
        timeout_ns: int | None,
        adapter: TypeAdapter[Any],
    ) -> Any:
        met_key, result = await self.wait(specs)
        if met_key != key or result.timed_out:
            timeout, within = _timed_out(timeout_ns)
            raise WaitTimeoutError(
                f"no signal {name!r} came {within} (wait {key})",
                wait_key=key,
                signal=name,
                timeout=timeout,
            )
        return loads(payload_text(result.payload), adapter)

    async def _event(
        self,
        key: str,
        name: str,
        match_json: str,
        specs: list[WaitSpec],
        timeout_ns: int | None,
        adapter: TypeAdapter[Any],
        since: _Since,
    ) -> Any:
        since_ns = await self._since_recorded(since)
        specs[0] = replace(specs[0], event=EventWait(name, match_json, since_ns))
        if timeout_ns is not None:
            specs[1] = replace(specs[1], fire_ns=since_ns + timeout_ns)
        met_key, result = await self.wait(specs)
        if met_key != key or result.timed_out:
            timeout, within = _timed_out(timeout_ns)
            matching = f" matching {match_json}" if match_json else ""
            raise WaitTimeoutError(
                f"no event {name!r}{matching} came {within} (wait {key})",
                wait_key=key,
                event=name,
                timeout=timeout,
            )
        return loads(payload_text(result.payload), adapter)

    async def _hook(
        self, key: str, specs: list[WaitSpec], timeout_ns: int | None, adapter: TypeAdapter[Any]
    ) -> Any:
        met_key, result = await self.wait(specs)
        if met_key != key or result.timed_out:
            timeout, within = _timed_out(timeout_ns)
            raise WaitTimeoutError(
                f"hook {key} was not executed {within}; it has expired",
                wait_key=key,
                timeout=timeout,
            )
        return loads(payload_text(result.payload), adapter)

    # -- the start of an event wait ---------------------------------------------------

    def _event_since(self, since_key: str) -> _Since:
        """The recorded start of an event wait, or now (whole ms) with its record_step
        sent."""
        record = self._journal.take(since_key)
        if record is not None:
            return _Since(_since_ns(since_key, record))
        since_ns = self._clock() // 1_000_000 * 1_000_000
        if not self._run.phase.executing:
            return _Since(since_ns, unsent=True)  # the run is ending: nothing is sent
        answer = self._run.send(
            commands.record_value(since_key, str(since_ns // 1_000_000), since_ns)
        )
        if answer is None:  # the channel is closed: the run is lost to this worker
            return _Since(since_ns, unsent=True)
        self._acks.starts.add(answer)
        answer.add_done_callback(self._since_answered)
        return _Since(since_ns, answer)

    def _since_answered(self, answer: asyncio.Future[commands.Result]) -> None:
        self._acks.starts.discard(answer)
        self._settler.touch()
        run = self._run
        if answer.cancelled() or run.phase.gone:
            return
        result = answer.result()
        if result.status in (commands.OK, commands.DUPLICATE):
            self._settler.check()  # the run may have been waiting only for this answer
            return
        if result.status != commands.LEASE_LOST:
            logger.error(
                "run %s: abandoned: the server answered %s to record_step (an event wait's "
                "start): %s",
                run.run_id,
                commands.status_name(result.status),
                result.message,
            )
        run.abandon()  # the call awaiting the answer (if any) raises too

    async def _since_recorded(self, since: _Since) -> int:
        """Wait until the start of an event wait is durable; return it (Unix ns). A
        DUPLICATE answer carries the start recorded first, which wins."""
        run = self._run
        if since.unsent:
            if run.phase.suspend_sent:
                await run.park()  # suspend_run is on its way: its answer unwinds us
            run.check_live()
            raise RunAbandoned
        answer = since.answer
        if answer is None:
            run.check_live()
            return since.ns
        result = await answer
        status = result.status
        if status == commands.DUPLICATE:
            run.check_live()
            return _since_ns(result.recorded_step.step_key, result.recorded_step)
        if status == commands.OK:
            run.check_live()
            return since.ns
        run.abandon()  # done already by _since_answered
        if status == commands.LEASE_LOST:
            raise LeaseLost(result.message)
        raise RunAbandoned
