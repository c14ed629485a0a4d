"""Step calls: replayed from the journal, or run here and recorded.

Each call gets its step key synchronously (``name``, ``name#2``, ...). A key found
in the journal returns the recorded outcome without running (after the recorded
retry backoffs, as they happened); any other step waits at the journal's gate, runs
here and its outcome is recorded (``record_step``) before the workflow moves past
it. A failed attempt the retry policy retries is recorded as an attempt, and the
next one starts after a durable backoff (``retry:KEY:N``).

On a server that applies a run's commands in order, the outcome of a step the
workflow function awaits in its own task is sent without waiting for its answer
and the workflow goes on from it; what the run
sends next waits for the answer (a new step body too), except the run's end,
which goes right behind it and is refused if the outcome was not recorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

from stepd import _commands as commands
from stepd import _tracing as tracing
from stepd._control import RunControl
from stepd._definitions import Step, Workflow
from stepd._journal import Journal
from stepd._keys import Keys
from stepd._policy import NO_RETRY, RetryPolicy
from stepd._runtime import SYSTEM, Runtime
from stepd._serde import dumps, error_info, loads, payload_text, rebuild_error
from stepd._settle import Settler
from stepd._wait_calls import WaitCalls
from stepd.errors import RetryExhaustedError, StepTimeoutError
from stepd.v1 import types_pb2

logger = logging.getLogger("stepd.worker")

ErrorOrigin = tuple[str, int, str]
"""Where an error raised out of a step came from: step key, attempt, recorded traceback."""


class StepCalls:
    """Runs and replays the steps of one run."""

    __slots__ = (
        "_errors",
        "_journal",
        "_keys",
        "_run",
        "_runtime",
        "_settler",
        "_waits",
        "_workflow",
    )

    def __init__(
        self,
        run: RunControl,
        workflow: Workflow[Any, Any],
        journal: Journal,
        keys: Keys,
        settler: Settler,
        waits: WaitCalls,
        runtime: Runtime = SYSTEM,
    ) -> None:
        self._run = run
        self._runtime = runtime  # the clock, and how a step body runs
        self._workflow = workflow
        self._journal = journal
        self._keys = keys
        self._settler = settler
        self._waits = waits
        # Errors raised out of steps, by id: (error, step key, attempt, recorded traceback).
        self._errors: dict[int, tuple[BaseException, str, int, str]] = {}

    def call(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, Any]:
        """Assign the call its step key now; replay it from the journal or run it."""
        key = self._keys.step_key(step.name)
        self._settler.touch()
        record = self._journal.take(key)
        if record is not None:
            return self._replay(step, key, record, self._journal.take_attempts(key))
        return self._execute(step, key, args, kwargs)

    def origin(self, exc: BaseException) -> ErrorOrigin | None:
        """Where ``exc`` came from, when a step raised it in the workflow."""
        origin = self._errors.get(id(exc))
        if origin is None or origin[0] is not exc:
            return None
        return origin[1], origin[2], origin[3]

    def _policy(self, step: Step[Any, Any]) -> RetryPolicy:
        return step.retry or self._workflow.retry or NO_RETRY

    async def _replay(
        self,
        step: Step[Any, Any],
        key: str,
        record: types_pb2.StepRecord,
        failed: Iterable[types_pb2.StepRecord],
    ) -> Any:
        self._run.check_live()
        policy = self._policy(step)
        for attempt in failed:  # the backoffs before the outcome, as they happened
            if attempt.attempt < record.attempt:
                await self._waits.retry_wait(key, attempt, policy)
        return self._outcome(step, key, record)

    async def _execute(
        self, step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        run = self._run
        policy = self._policy(step)
        timeout = step.timeout if step.timeout is not None else self._workflow.step_timeout
        attempt = 1
        failed = self._journal.take_attempts(key)
        if not failed:  # a new step: not before every record of the journal was taken
            await run.gate(key)
        else:  # replay: attempts that failed before; the last one decides
            last = failed[-1]
            if not policy.retries(rebuild_error(last.error.type, last.error.message), last.attempt):
                for record in failed[:-1]:
                    await self._waits.retry_wait(key, record, policy)
                return await self._record_outcome(step, key, last, policy)
            for record in failed:  # each backoff again, in order: met ones come from the journal
                await self._waits.retry_wait(key, record, policy)
            attempt = last.attempt + 1
        while True:
            await run.outcomes_answered()  # a step body starts only after those before
            if run.phase.holds_new_work:
                await run.park()
            run.check_live()
            with run.in_flight():  # the attempt and its record, as one
                record, result_json, error = await self._attempt(
                    step, key, attempt, args, kwargs, timeout
                )
                retry = error is not None and policy.retries(error, attempt)
                record.attempt_only = retry
                if not retry and run.goes_on_from_outcomes:
                    # The server applies what the run sends next after this record:
                    # go on now; anything sent next but the run's end waits for
                    # the answer, and the end is refused if it is not OK.
                    await run.send_outcome(commands.record_step(record))
                    if error is not None:
                        raise self._step_error(error, key, attempt, policy, record.error)
                    return loads(result_json, step.result_adapter)
                result = await run.submit_in_order(commands.record_step(record))
            if result.status == commands.DUPLICATE:
                if not result.recorded_step.attempt_only:  # an outcome stands: it wins
                    return self._outcome(step, key, result.recorded_step)
                record = result.recorded_step
            if not retry:
                if error is not None:
                    raise self._step_error(error, key, attempt, policy, record.error)
                return loads(result_json, step.result_adapter)
            logger.info(
                "run %s: step %s attempt %d failed (%s); retrying",
                run.run_id,
                key,
                attempt,
                record.error.type,
            )
            await self._waits.retry_wait(key, record, policy)
            attempt = record.attempt + 1

    async def _record_outcome(
        self,
        step: Step[Any, Any],
        key: str,
        last: types_pb2.StepRecord,
        policy: RetryPolicy,
    ) -> Any:
        """Record the last failed attempt as the step's outcome (the policy allows no
        other) and raise its error."""
        run = self._run
        run.check_live()
        record = types_pb2.StepRecord()
        record.CopyFrom(last)
        record.attempt_only = False
        with run.in_flight():
            result = await run.submit_in_order(commands.record_step(record))
        if result.status == commands.DUPLICATE:
            record = result.recorded_step
        return self._outcome(step, key, record)

    def _step_error(
        self,
        error: Exception,
        key: str,
        attempt: int,
        policy: RetryPolicy,
        info: types_pb2.ErrorInfo,
        traceback_text: str = "",
    ) -> Exception:
        """The error a failed step raises in the workflow: its own error, or, when a
        retry policy ran out of attempts, a RetryExhaustedError caused by it."""
        raised: Exception = error
        if policy.max_attempts > 1 and policy.retryable(error):
            raised = RetryExhaustedError(key, attempt, info.type, info.message)
            raised.__cause__ = error
        self._errors[id(raised)] = (raised, key, attempt, traceback_text)
        return raised

    async def _attempt(
        self,
        step: Step[Any, Any],
        key: str,
        attempt: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        step_timeout: float | None,
    ) -> tuple[types_pb2.StepRecord, str, Exception | None]:
        """Run the step body once (cancelled after ``step_timeout`` seconds, if set); return
        its StepRecord, result JSON and error."""
        if step.rate is not None:
            await self._take_turn(step, key, args, kwargs)
        clock = self._runtime.time_ns
        start = clock()
        result_json = ""
        error: Exception | None = None
        workflow = self._workflow
        with tracing.step_span(
            self._run.run_id, workflow.name, workflow.version, key, attempt
        ) as span:
            try:
                if step_timeout is None:
                    value = await self._runtime.run_step(step, key, args, kwargs)
                else:
                    await self._announce_start(key, attempt, step_timeout)
                    value = await self._invoke_with_timeout(step, key, args, kwargs, step_timeout)
                result_json = dumps(value, step.result_adapter)
            except Exception as exc:
                error = exc
                tracing.failed(span, exc)
        end = clock()
        record = types_pb2.StepRecord()
        record.step_key = key
        record.attempt = attempt
        record.start_time.FromNanoseconds(start)
        record.end_time.FromNanoseconds(end)
        if error is None:
            record.result.json = result_json
        else:
            record.error.CopyFrom(error_info(error, step_key=key, attempt=attempt))
        return record, result_json, error

    async def _invoke_with_timeout(
        self,
        step: Step[Any, Any],
        key: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        step_timeout: float,
    ) -> Any:
        """Run the body; past ``step_timeout`` cancel it and raise StepTimeoutError (a sync
        body's thread cannot be stopped: it is abandoned)."""
        scope = asyncio.timeout(step_timeout)
        try:
            async with scope:
                return await self._runtime.run_step(step, key, args, kwargs)
        except TimeoutError:
            if not scope.expired():
                raise  # the body's own TimeoutError
            raise StepTimeoutError(
                f"step {key} did not finish within its timeout of {step_timeout:g} s"
            ) from None

    async def _take_turn(
        self, step: Step[Any, Any], key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Take the attempt's turn under the step's rate limit (``acquire_rate``) and
        wait until it begins: the server hands out the turns, so the limit holds
        across workers."""
        rate = step.rate
        assert rate is not None
        command = commands.acquire_rate(
            rate.name or step.name, rate.key_for(args, kwargs), rate.limit, rate.period_ms, key
        )
        result = await self._run.submit(command)
        delay = result.start_after.ToNanoseconds() / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

    async def _announce_start(self, key: str, attempt: int, seconds: float) -> None:
        """Send ``start_step`` and wait for its answer, so the server knows of the
        attempt before its body runs (a body that blocks the event loop would keep
        it from being sent at all): the server ends the attempt if this worker
        cannot."""
        await self._run.submit(commands.start_step(key, attempt, seconds))

    def _outcome(self, step: Step[Any, Any], key: str, record: types_pb2.StepRecord) -> Any:
        """Return a recorded result, or raise the recorded error rebuilt (as the
        RetryExhaustedError it caused when the step's retries ran out)."""
        if record.HasField("error"):
            error = rebuild_error(record.error.type, record.error.message)
            raise self._step_error(
                error, key, record.attempt, self._policy(step), record.error, record.error.traceback
            )
        return loads(payload_text(record.result), step.result_adapter)
