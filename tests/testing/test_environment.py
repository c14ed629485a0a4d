"""stepd.testing.WorkflowEnvironment: a server and a worker in the test's process,
whose clock skips ahead while the test waits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from stepd import RunFailedError
from stepd.testing import WorkflowEnvironment
from tests.testing import workflows as wf

HOUR = timedelta(hours=1)


async def test_a_week_long_sleep_and_a_48_hour_timeout_take_milliseconds() -> None:
    started = time.monotonic()
    async with WorkflowEnvironment([wf.week_then_signal]) as env:
        before = env.now()
        result = await env.client.execute(wf.week_then_signal)
        skipped = env.now() - before
    wall = time.monotonic() - started
    assert result["decision"] is None  # the 48 hours passed without a signal
    assert result["slept_hours"] >= 7 * 24
    assert 7 * 24 + 48 <= result["total_hours"] < 7 * 24 + 48 + 1
    assert skipped >= timedelta(days=9)  # ctx.now() and the environment's clock agree
    assert wall < 2, f"took {wall:.2f} s of wall time"  # a bound, not a benchmark


@pytest.mark.parametrize("warm_up_seconds", [0, 0.3])
async def test_a_signal_sent_at_hour_one_beats_the_timeout(warm_up_seconds: float) -> None:
    async with WorkflowEnvironment([wf.week_then_signal]) as env:
        handle = await env.client.trigger(wf.week_then_signal, warm_up_seconds)
        # The sleep's week and hour start once the run has reached its first wait.
        await env.sleep(timedelta(days=7, hours=1))
        assert (await handle.info()).status == "suspended"  # waiting for the signal
        await env.signal(handle, "decision", "approved")
        result = await handle.result()
    assert result["decision"] == "approved"
    assert 7 * 24 + 1 <= result["total_hours"] < 7 * 24 + 2


async def test_time_goes_at_its_pace_while_nobody_waits() -> None:
    async with WorkflowEnvironment([wf.week_then_signal]) as env:
        handle = await env.client.trigger(wf.week_then_signal)
        before = env.now()
        await asyncio.sleep(0.3)  # a real sleep: the run sleeps on, the clock does not jump
        assert env.now() - before < timedelta(seconds=5)
        assert (await handle.info()).status == "suspended"


async def test_a_mocked_step_is_never_run_and_its_mock_sees_the_arguments() -> None:
    wf.BODIES_RUN.clear()
    async with WorkflowEnvironment([wf.billing]) as env:
        charge = env.mock_step(wf.charge, "mock-receipt")
        receipt = await env.client.execute(wf.billing, "ada")
        history = await env.history(await env.client.trigger(wf.billing, "bob"))
        await env.client.get_handle(history.run_id).result()
    assert receipt == "mock-receipt"
    assert wf.BODIES_RUN == []
    assert charge.await_count == 2
    charge.assert_any_await("ada", 1250, currency="USD")
    charge.assert_awaited_with("bob", 1250, currency="USD")


async def test_a_mocked_step_fails_as_its_side_effect_says_and_retries_skip_ahead() -> None:
    async with WorkflowEnvironment([wf.retries_for_hours]) as env:
        flaky = env.mock_step(
            "flaky", side_effect=[ValueError("down"), ValueError("still down"), "third time"]
        )
        handle = await env.client.trigger(wf.retries_for_hours)
        result = await handle.result()
        history = await env.history(handle.run_id)
    assert result["outcome"] == "third time"
    assert 2 <= result["hours"] < 2.5  # two hour-long backoffs, skipped
    assert flaky.await_count == 3
    failed = [e for e in history.events if e.type == "step_failed"]
    assert [(e.attempt, e.attempt_only) for e in failed] == [(1, True), (2, True)]


async def test_a_mock_fails_where_the_real_step_would_refuse_its_arguments_or_result() -> None:
    async with WorkflowEnvironment([wf.billing, wf.calls_notify_wrongly]) as env:
        notify = env.mock_step(wf.notify, "sent")
        with pytest.raises(RunFailedError) as wrong_call:
            await env.client.execute(wf.calls_notify_wrongly)
        env.mock_step(wf.charge, return_value={"not": "a str"})  # the step returns a str
        with pytest.raises(RunFailedError) as wrong_result:
            await env.client.execute(wf.billing, "ada")
    assert wrong_call.value.info.error_type == "builtins.TypeError"
    assert "missing a required argument" in (wrong_call.value.info.error_message or "")
    notify.assert_not_awaited()
    message = wrong_result.value.info.error_message or ""
    assert "the mock of step 'charge' returned {'not': 'a str'}" in message


async def test_a_child_workflow_is_mocked() -> None:
    async with WorkflowEnvironment([wf.parent, wf.child_report]) as env:
        report = env.mock_workflow(wf.child_report, side_effect=lambda n: f"mock report {n}")
        result = await env.client.execute(wf.parent)
    assert result == ["mock report 1", "mock report 2"]
    assert [c.args for c in report.await_args_list] == [(1,), (2,)]


async def test_a_workflow_mocked_before_the_environment_starts_is_served() -> None:
    env = WorkflowEnvironment([wf.parent])
    env.mock_workflow(wf.child_report, "mocked")
    async with env:
        assert await env.client.execute(wf.parent) == ["mocked", "mocked"]
        with pytest.raises(ValueError, match="not served"):
            env.mock_workflow(wf.week_then_signal)


async def test_hooks_and_events_from_the_test() -> None:
    async with WorkflowEnvironment([wf.hooked, wf.waits_for_event]) as env:
        notify = env.mock_step(wf.notify, "sent")
        hooked = await env.client.trigger(wf.hooked)
        paid = await env.client.trigger(wf.waits_for_event, 7)
        await env.sleep(1)  # both runs reach their wait
        await env.execute_hook(hooked, {"approved": True})
        published = await env.publish_event("order.paid", {"order": 7, "cents": 990})
        assert await hooked.result() == {"approved": True}
        assert await paid.result() == {"order": 7, "cents": 990}
    assert published.woken_run_ids == (paid.run_id,)
    assert notify.await_args is not None
    token = notify.await_args.args[1]
    assert token.startswith("h1.")  # the real token reached the mocked step


async def test_an_unanswered_event_wait_times_out_in_skipped_time() -> None:
    async with WorkflowEnvironment([wf.waits_for_event]) as env:
        with pytest.raises(RunFailedError) as failed:
            await env.client.execute(wf.waits_for_event, 8)
        info = failed.value.info
    assert info.error_type == "stepd.errors.WaitTimeoutError"


async def test_the_clock_starts_where_told_and_ctx_now_agrees() -> None:
    start = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    async with WorkflowEnvironment([wf.week_then_signal], start_time=start) as env:
        assert timedelta(0) <= env.now() - start < timedelta(seconds=5)
        handle = await env.client.trigger(wf.week_then_signal)
        await handle.result()
        history = await env.history(handle)
    times = [e.time for e in history.events if e.time is not None]
    assert min(times) >= start
    assert max(times) - min(times) >= timedelta(days=9)


async def test_without_time_skipping_time_passes_for_real() -> None:
    async with WorkflowEnvironment([wf.week_then_signal], time_skipping=False) as env:
        handle = await env.client.trigger(wf.week_then_signal)
        before = env.now()
        await env.sleep(0.2)
        assert timedelta(seconds=0.2) <= env.now() - before < timedelta(seconds=5)
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.5)


async def test_deadlines_delayed_starts_and_schedules_fire_in_skipped_time() -> None:
    start = datetime(2030, 3, 1, 8, 0, tzinfo=UTC)
    started = time.monotonic()
    workflows = [wf.sleeps_three_days, wf.quick, wf.every_morning]
    async with WorkflowEnvironment(workflows, start_time=start) as env:
        late = await env.client.trigger(wf.sleeps_three_days, deadline=env.now() + 24 * HOUR)
        with pytest.raises(RunFailedError) as failed:
            await late.result()
        assert failed.value.info.failure_reason == "deadline_exceeded"

        delayed = await env.client.trigger(wf.quick, start_at=env.now() + 48 * HOUR)
        ran_at = datetime.fromisoformat(await delayed.result())
        assert ran_at - start >= 72 * HOUR  # 24 hours for the deadline, then 48

        await env.sleep(timedelta(days=2))
        mornings = [
            datetime.fromisoformat(run.result)
            async for run in env.client.list_runs(workflow=wf.every_morning, payloads=True)
            if run.status == "completed"
        ]
    # 09:00 on each day from the start (08:00 on the 1st) to the end (08:00 on the 6th).
    assert sorted(m.date().isoformat() for m in mornings) == [
        "2030-03-01",
        "2030-03-02",
        "2030-03-03",
        "2030-03-04",
        "2030-03-05",
    ]
    assert all(m.hour == 9 for m in mornings)
    assert time.monotonic() - started < 5  # a bound, not a benchmark
