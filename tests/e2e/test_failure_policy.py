"""Failure policy through a real server and real worker processes: retries with each
backoff kind, defaults and overrides, non-retryable errors, a crash during the backoff,
exhaustion caught for compensation, step timeouts (the worker's and the server's),
deadlines, execution timeouts, the journal limit, and the error details of a failed run."""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stepd import Client, RunInfo, RunStatus
from stepd.history import RunEventType
from tests.e2e import policy_workflows as pw
from tests.e2e.harness import ManagedProcess, Server, Stack, eventually, read_marks, release

MODULES = ("tests.e2e.policy_workflows",)
RESULT_TIMEOUT = 30
# Lateness allowed for a retry: suspension, timer, re-dispatch and replay.
LATE = 0.6


@pytest.fixture
def policy_worker(stack: Stack, server: Server) -> ManagedProcess:
    return stack.start_worker(server, MODULES)


def attempt_times(marks: Path, tag: str, name: str) -> list[float]:
    return [float(line.split()[1]) for line in read_marks(marks, tag) if line.split()[0] == name]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def finished(client: Client, run_id: str) -> RunInfo:
    """Poll until the run is in a terminal status."""
    async with asyncio.timeout(RESULT_TIMEOUT):
        while not (info := await client.get_run(run_id)).status.is_terminal:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return info


async def wait_failed(client: Client, run_id: str) -> None:
    info = await finished(client, run_id)
    assert info.status is RunStatus.FAILED, info


async def test_each_backoff_kind_spaces_the_attempts_as_its_policy_says(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    result = await client.execute(pw.backoff, pw.Flaky(tag=tag, failures=3), timeout=60)
    assert result == {"constant": 4, "linear": 4, "exponential": 4, "jittered": 4}
    d = pw.BACKOFF_DELAY
    expected = {
        "constant": [d, d, d],
        "linear": [d, 2 * d, 3 * d],
        "exponential": [d, 2 * d, 4 * d],
    }
    for name, delays in expected.items():
        measured = gaps(attempt_times(marks, tag, name))
        assert len(measured) == 3, name
        for gap, delay in zip(measured, delays, strict=True):
            assert delay - 0.01 <= gap <= delay + LATE, (name, measured, delays)
    # Jitter 0.5 around 0.4 s: every gap within [0.2, 0.6] s (plus lateness).
    for gap in gaps(attempt_times(marks, tag, "jittered")):
        assert 0.2 - 0.01 <= gap <= 0.6 + LATE


async def test_every_failed_attempt_is_in_the_history_with_its_error(
    policy_worker: object, client: Client, tag: str
) -> None:
    handle = await client.trigger(pw.backoff, pw.Flaky(tag=tag, failures=2))
    await handle.result(timeout=60)
    events = [e async for e in client.list_run_events(handle.run_id)]
    failed = [(e.key, e.attempt) for e in events if e.type is RunEventType.STEP_FAILED]
    assert failed == [
        (key, n) for key in ("constant", "linear", "exponential", "jittered") for n in (1, 2)
    ]
    first = next(e for e in events if e.type is RunEventType.STEP_FAILED)
    assert first.error_type == "builtins.ConnectionError"
    assert first.error_message == "attempt 1 failed"
    assert first.error_traceback is not None and "ConnectionError" in first.error_traceback
    completed = [(e.key, e.attempt) for e in events if e.type is RunEventType.STEP_COMPLETED]
    assert completed == [("constant", 3), ("linear", 3), ("exponential", 3), ("jittered", 3)]


async def test_workflow_defaults_apply_to_steps_that_do_not_override_them(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    result = await client.execute(pw.defaults, pw.Tagged(tag=tag), timeout=RESULT_TIMEOUT)
    assert result == {"uses_default": 3, "overrides": 2, "no_retry": "ConnectionError"}
    assert len(attempt_times(marks, tag, "uses_default")) == 3
    assert len(attempt_times(marks, tag, "overrides")) == 2
    assert len(attempt_times(marks, tag, "no_retry")) == 1


async def test_non_retryable_errors_fail_the_step_at_once(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    result = await client.execute(pw.non_retryable, pw.Tagged(tag=tag), timeout=RESULT_TIMEOUT)
    assert result == {"charge": "card declined", "validate": "the order is malformed"}
    assert len(attempt_times(marks, tag, "charge")) == 1
    assert len(attempt_times(marks, tag, "validate")) == 1


async def test_a_worker_crash_during_the_backoff_changes_nothing(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    first = stack.start_worker(server, MODULES)
    handle = await client.trigger(pw.slow_retry_flow, pw.Flaky(tag=tag, failures=1))
    await eventually(
        lambda: len(attempt_times(marks, tag, "slow_retry")) == 1, what="the first attempt"
    )
    await asyncio.sleep(0.3)  # the failed attempt is recorded and the run suspended
    first.kill()
    stack.start_worker(server, MODULES)
    assert await handle.result(timeout=RESULT_TIMEOUT) == 2
    times = attempt_times(marks, tag, "slow_retry")
    assert len(times) == 2  # attempt 1 never ran again
    assert pw.CRASH_BACKOFF - 0.01 <= times[1] - times[0] <= pw.CRASH_BACKOFF + 2 * LATE
    info = await client.get_run(handle.run_id)
    assert info.status is RunStatus.COMPLETED


async def test_exhausted_retries_are_caught_by_the_workflow_to_compensate(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    result = await client.execute(pw.compensate, pw.Tagged(tag=tag), timeout=RESULT_TIMEOUT)
    assert result == {
        "compensation": "hotel released",
        "attempts": 3,
        "error_type": "builtins.ConnectionError",
        "error_message": "airline unavailable",
        "cause": "ConnectionError",
    }
    assert len(attempt_times(marks, tag, "reserve_flight")) == 3
    assert len(attempt_times(marks, tag, "release_hotel")) == 1


async def test_a_failed_run_shows_where_its_error_came_from(
    policy_worker: object, client: Client, tag: str
) -> None:
    handle = await client.trigger(pw.uncaught, pw.Tagged(tag=tag))
    info = await finished(client, handle.run_id)
    assert info.status is RunStatus.FAILED
    assert info.failure_reason == "workflow_error"
    assert info.error_type == "stepd.errors.RetryExhaustedError"
    assert info.error_message == (
        "step 'always_fails' failed after 2 attempts: builtins.ValueError: the ledger is locked"
    )
    assert info.error_step_key == "always_fails"
    assert info.error_attempt == 2
    assert info.error_traceback is not None
    assert "always_fails" in info.error_traceback  # the step's own frames
    assert "ValueError: the ledger is locked" in info.error_traceback
    events = [e async for e in client.list_run_events(handle.run_id)]
    assert events[-1].type is RunEventType.FAILED
    assert events[-1].error_type == "stepd.errors.RetryExhaustedError"


async def test_a_step_over_its_timeout_is_cancelled_and_retried(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(pw.step_timeout, pw.Tagged(tag=tag))
    assert await handle.result(timeout=RESULT_TIMEOUT) == {"async": 2, "sync": 2}
    assert "cancelled" in read_marks(marks, tag)  # the first attempt's body was cancelled
    events = [e async for e in client.list_run_events(handle.run_id)]
    timed_out = [e for e in events if e.type is RunEventType.STEP_FAILED]
    assert [(e.key, e.attempt) for e in timed_out] == [("slow_first", 1), ("slow_sync_first", 1)]
    assert all(e.error_type == "stepd.StepTimeoutError" for e in timed_out)


@pytest.mark.timeout(90)
async def test_the_server_ends_an_attempt_whose_worker_cannot(
    stack: Stack, tmp_path: Path, marks: Path, tag: str
) -> None:
    # A lease timeout far longer than the step's: only the step timeout can free the run soon.
    server = stack.start_server(tmp_path / "stepd.db", args=["--lease-timeout", "60"])
    hung = stack.start_worker(server, MODULES, concurrency=1)
    async with Client(server.address) as client:
        handle = await client.trigger(pw.hung_step, pw.Tagged(tag=tag))
        await eventually(
            lambda: len(attempt_times(marks, tag, "hangs_first")) == 1, what="the first attempt"
        )
        stack.start_worker(server, MODULES)
        try:
            # Blocked in time.sleep, the first worker neither reports nor heartbeats;
            # the server ends attempt 1 at its timeout and another worker runs attempt 2.
            assert await handle.result(timeout=30) == 2
        finally:
            hung.kill()
        events = [e async for e in client.list_run_events(handle.run_id)]
        failed = [e for e in events if e.type is RunEventType.STEP_FAILED]
        assert len(failed) == 1 and failed[0].attempt == 1
        assert failed[0].error_type == "stepd.StepTimeoutError"
        assert failed[0].error_message is not None
        assert "the server ended it" in failed[0].error_message


async def test_a_deadline_ends_a_running_run_and_stops_its_worker(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=1.5)
    handle = await client.trigger(pw.blocks, pw.Tagged(tag=tag), deadline=deadline)
    await wait_failed(client, handle.run_id)
    info = await client.get_run(handle.run_id)
    assert info.failure_reason == "deadline_exceeded"
    assert info.error_type == "stepd.DeadlineExceeded"
    assert info.deadline is not None
    assert info.end_time is not None and info.end_time >= deadline
    await eventually(lambda: "cancelled" in read_marks(marks, tag), what="the step cancelled")
    release(marks, tag)
    await asyncio.sleep(0.5)
    assert "after" not in read_marks(marks, tag)  # no further step started


async def test_a_deadline_ends_a_suspended_run(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=1.5)
    handle = await client.trigger(pw.sleeps, pw.Tagged(tag=tag), deadline=deadline)
    await wait_failed(client, handle.run_id)
    info = await client.get_run(handle.run_id)
    assert info.failure_reason == "deadline_exceeded"
    assert info.end_time is not None and info.end_time < deadline + timedelta(seconds=5)
    assert "after" not in read_marks(marks, tag)


async def test_an_execution_timeout_ends_a_running_run(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(pw.blocks_with_timeout, pw.Tagged(tag=tag))
    await wait_failed(client, handle.run_id)
    info = await client.get_run(handle.run_id)
    assert info.failure_reason == "execution_timeout"
    assert info.error_type == "stepd.ExecutionTimeout"
    assert info.start_time is not None and info.execution_deadline is not None
    assert info.execution_deadline - info.start_time == timedelta(milliseconds=1500)
    await eventually(lambda: "cancelled" in read_marks(marks, tag), what="the step cancelled")
    release(marks, tag)
    await asyncio.sleep(0.5)
    assert "after" not in read_marks(marks, tag)


async def test_an_execution_timeout_ends_a_suspended_run(
    policy_worker: object, client: Client, tag: str
) -> None:
    handle = await client.trigger(pw.sleeps_with_timeout, pw.Tagged(tag=tag))
    await wait_failed(client, handle.run_id)
    assert (await client.get_run(handle.run_id)).failure_reason == "execution_timeout"


async def test_a_deadline_survives_a_server_restart(
    stack: Stack, tmp_path: Path, marks: Path, tag: str
) -> None:
    database = tmp_path / "stepd.db"
    server = stack.start_server(database)
    async with Client(server.address) as client:
        deadline = datetime.now(UTC) + timedelta(seconds=2)
        handle = await client.trigger(pw.sleeps, pw.Tagged(tag=tag), deadline=deadline)
        run_id = handle.run_id
    server.process.kill()
    restarted = stack.start_server(database)
    async with Client(restarted.address) as client:
        await wait_failed(client, run_id)
        assert (await client.get_run(run_id)).failure_reason == "deadline_exceeded"


async def test_the_journal_limit_fails_a_runaway_run(
    policy_worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(pw.runaway, pw.Tagged(tag=tag))
    await wait_failed(client, handle.run_id)
    info = await client.get_run(handle.run_id)
    assert info.failure_reason == "max_entries_exceeded"
    assert info.error_type == "stepd.MaxEntriesExceeded"
    assert info.error_message is not None and "limit of 5 journal entries" in info.error_message
    events = [e async for e in client.list_run_events(handle.run_id)]
    assert len([e for e in events if e.type is RunEventType.STEP_COMPLETED]) == 5

    sleeper = await client.trigger(pw.runaway_sleeper, pw.Tagged(tag=f"{tag}-sleeper"))
    await wait_failed(client, sleeper.run_id)
    assert (await client.get_run(sleeper.run_id)).failure_reason == "max_entries_exceeded"


async def test_the_server_default_journal_limit(
    stack: Stack, tmp_path: Path, marks: Path, tag: str
) -> None:
    server = stack.start_server(tmp_path / "stepd.db", args=["--max-journal-entries", "3"])
    stack.start_worker(server, ("tests.e2e.workflows",))
    async with Client(server.address) as client:
        from tests.e2e import workflows as wf

        handle = await client.trigger(wf.loop, wf.Job(tag=tag, value=10))
        await wait_failed(client, handle.run_id)
        assert (await client.get_run(handle.run_id)).failure_reason == "max_entries_exceeded"
