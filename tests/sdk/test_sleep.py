"""Durable sleep in the replay engine: wait keys, replay, suspension (no gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stepd import WorkflowContext, step, workflow
from stepd._phase import RunOutcome
from stepd._replay import RunExecutor
from stepd.errors import WorkflowContextError
from stepd.v1 import worker_service_pb2

from .conftest import FakeChannel, make_task, ok

calls: list[str] = []
gate = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    global gate
    calls.clear()
    gate = asyncio.Event()


@step
async def note(label: str) -> str:
    calls.append(label)
    return label


@step
async def gated(label: str) -> str:
    calls.append(f"{label}:start")
    await gate.wait()
    calls.append(f"{label}:end")
    return label


@step(name="sleep")
async def sleep_step() -> str:
    """A step named like the sleeps: its key is "sleep", theirs "sleep:N"."""
    return "step"


def executor_for(wf: Any, channel: FakeChannel, **task: Any) -> RunExecutor:
    return RunExecutor(wf, make_task(wf.name, wf.version, **task), channel)


async def run(wf: Any, channel: FakeChannel, **task: Any) -> RunOutcome:
    return await asyncio.wait_for(executor_for(wf, channel, **task).execute(), 5)


def keys(suspension: dict[str, int]) -> list[str]:
    return list(suspension)


# -- a sleep between two steps ------------------------------------------------------


@workflow
async def nap(ctx: WorkflowContext, seconds: float) -> list[str]:
    before = await note("before")
    await ctx.sleep(seconds)
    return [before, await note("after")]


async def test_a_new_sleep_suspends_the_run_after_the_step_before_it(
    channel: FakeChannel,
) -> None:
    start = time.time_ns()
    executor = executor_for(nap, channel, input=30)
    assert await asyncio.wait_for(executor.execute(), 5) is RunOutcome.SUSPENDED
    end = time.time_ns()
    assert channel.kinds() == ["record_step", "suspend_run"]
    assert calls == ["before"]
    [suspension] = channel.suspensions()
    assert keys(suspension) == ["sleep:1"]
    assert start + 30 * 10**9 <= suspension["sleep:1"] <= end + 30 * 10**9
    assert executor.suspended and executor.abandoned
    assert executor.release() is False  # nothing is sent after the suspension
    assert channel.kinds() == ["record_step", "suspend_run"]


async def test_a_met_sleep_returns_at_once_on_replay(channel: FakeChannel) -> None:
    outcome = await run(nap, channel, input=30, journal={"note": "before"}, met=["sleep:1"])
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["after"]
    assert channel.kinds() == ["record_step", "complete_run"]
    assert channel.step_keys() == ["note#2"]
    assert channel.final().complete_run.result.json == '["before","after"]'


async def test_an_unmet_sleep_is_sent_again_with_the_same_key(channel: FakeChannel) -> None:
    # Re-dispatched before the timer fired (a worker crash): the sleep is re-sent with
    # the same key; the server keeps the fire time it stored first.
    outcome = await run(nap, channel, input=30, journal={"note": "before"})
    assert outcome is RunOutcome.SUSPENDED
    assert calls == []
    assert channel.kinds() == ["suspend_run"]
    assert keys(channel.suspensions()[0]) == ["sleep:1"]


# -- wait keys ----------------------------------------------------------------------

WHEN = datetime(2100, 1, 1, 12, 0, tzinfo=UTC)
WHEN_NS = int(WHEN.timestamp()) * 10**9


@workflow
async def numbered(ctx: WorkflowContext) -> None:
    await sleep_step()
    await ctx.sleep(0)  # sleep:1, at once
    await ctx.sleep_until(datetime(2000, 1, 1, tzinfo=UTC))  # sleep:2, in the past
    await asyncio.gather(ctx.sleep(60), ctx.sleep_until(WHEN))  # sleep:3 and sleep:4


async def test_wait_keys_count_every_sleep_call_apart_from_step_keys(
    channel: FakeChannel,
) -> None:
    assert await run(numbered, channel) is RunOutcome.SUSPENDED
    assert channel.step_keys() == ["sleep"]
    [suspension] = channel.suspensions()
    assert keys(suspension) == ["sleep:3", "sleep:4"]
    assert suspension["sleep:4"] == WHEN_NS


async def test_met_keys_replay_in_journal_order(channel: FakeChannel) -> None:
    # sleep:2 was met when its time was still to come; on replay it is in the past, but
    # it is met: it waits for its turn like any met wait, then sleep:4 is delivered.
    journal = {"sleep": "step"}
    outcome = await run(numbered, channel, journal=journal, met=["sleep:2", "sleep:4"])
    assert outcome is RunOutcome.SUSPENDED
    assert channel.suspensions() == [{"sleep:3": channel.suspensions()[0]["sleep:3"]}]


async def test_a_met_wait_out_of_turn_holds_the_run(channel: FakeChannel) -> None:
    # sleep:4 cannot have been met before sleep:2, which the code awaits first.
    executor = executor_for(
        numbered, channel, journal={"sleep": "step"}, met=["sleep:4", "sleep:2"]
    )
    assert await asyncio.wait_for(executor.execute(), 5) is RunOutcome.NON_DETERMINISTIC
    assert channel.commands == []
    assert executor.non_determinism is not None
    assert "next met wait is sleep:4, but the code waits on sleep:2" in str(
        executor.non_determinism
    )
    assert not executor.abandoned  # held: a drain gives it back
    executor.drain()
    assert channel.kinds() == ["release_run"]


@workflow
async def instant(ctx: WorkflowContext) -> str:
    await ctx.sleep(0)
    await ctx.sleep(-5)
    await ctx.sleep(timedelta(0))
    await ctx.sleep(timedelta(seconds=-1))
    await ctx.sleep_until(datetime(2000, 1, 1))
    await ctx.sleep_until(datetime.now(UTC) - timedelta(seconds=1))
    return await note("done")


async def test_zero_negative_and_past_sleeps_return_at_once(channel: FakeChannel) -> None:
    assert await run(instant, channel) is RunOutcome.COMPLETED
    assert channel.kinds() == ["record_step", "complete_run"]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2100, 1, 1, 12, 0), WHEN_NS),  # naive: UTC
        (datetime(2100, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))), WHEN_NS),
        (datetime(2100, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC), WHEN_NS + 250_000_000),
    ],
    ids=["naive-is-utc", "offset", "microseconds"],
)
async def test_sleep_until_fire_times(channel: FakeChannel, when: datetime, expected: int) -> None:
    @workflow(name="until")
    async def until(ctx: WorkflowContext) -> None:
        await ctx.sleep_until(when)

    assert await run(until, channel) is RunOutcome.SUSPENDED
    assert channel.suspensions() == [{"sleep:1": expected}]


async def test_sleep_accepts_a_timedelta(channel: FakeChannel) -> None:
    @workflow(name="week")
    async def week(ctx: WorkflowContext) -> None:
        await ctx.sleep(timedelta(days=7, microseconds=1))

    start = time.time_ns()
    assert await run(week, channel) is RunOutcome.SUSPENDED
    fire = channel.suspensions()[0]["sleep:1"]
    assert 0 <= fire - start - (7 * 86_400 * 10**9 + 1000) < 10**9


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda ctx: ctx.sleep("1"), TypeError),
        (lambda ctx: ctx.sleep(True), TypeError),
        (lambda ctx: ctx.sleep(float("nan")), ValueError),
        (lambda ctx: ctx.sleep(float("inf")), ValueError),
        (lambda ctx: ctx.sleep(10**12), ValueError),
        (lambda ctx: ctx.sleep_until("2100-01-01"), TypeError),
    ],
    ids=["str", "bool", "nan", "inf", "after-year-9999", "until-str"],
)
def test_bad_arguments_raise_at_the_call(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(WorkflowContext("r", "wf", "1"))


async def test_a_context_made_by_hand_sleeps_plainly() -> None:
    ctx = WorkflowContext("r", "wf", "1")
    start = time.monotonic()
    await ctx.sleep(0.02)
    await ctx.sleep_until(datetime.now(UTC) + timedelta(seconds=0.02))
    assert time.monotonic() - start >= 0.035


# -- suspension waits for everything in flight -----------------------------------------


@workflow
async def step_and_sleep(ctx: WorkflowContext) -> list[Any]:
    return list(await asyncio.gather(gated("g"), ctx.sleep(60)))


def answer_later(*kinds: str) -> FakeChannel:
    """A channel that leaves the commands of these kinds unanswered."""
    return FakeChannel(lambda c: None if c.WhichOneof("command") in kinds else ok())


async def test_suspends_only_once_the_step_in_flight_is_acknowledged() -> None:
    channel = answer_later("record_step")
    task = asyncio.create_task(executor_for(step_and_sleep, channel).execute())
    await asyncio.sleep(0.02)
    assert calls == ["g:start"]
    assert channel.commands == []  # the sleep waits; the step body runs
    gate.set()
    await asyncio.sleep(0.02)
    assert channel.kinds() == ["record_step"]  # recorded, not yet acknowledged
    channel.resolve(1, ok())
    assert await asyncio.wait_for(task, 5) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "suspend_run"]
    assert keys(channel.suspensions()[0]) == ["sleep:1"]


async def test_gather_of_a_step_and_a_met_sleep_replays(channel: FakeChannel) -> None:
    outcome = await run(step_and_sleep, channel, journal={"gated": "g"}, met=["sleep:1"])
    assert outcome is RunOutcome.COMPLETED
    assert calls == []
    assert channel.final().complete_run.result.json == '["g",null]'


@workflow
async def two_sleeps(ctx: WorkflowContext) -> str:
    await asyncio.gather(ctx.sleep(10), ctx.sleep(20))
    return await note("woke")


async def test_two_sleeps_in_gather_suspend_together_and_replay_one_by_one(
    channel: FakeChannel,
) -> None:
    assert await run(two_sleeps, channel) is RunOutcome.SUSPENDED
    [both] = channel.suspensions()
    assert keys(both) == ["sleep:1", "sleep:2"]
    assert both["sleep:2"] - both["sleep:1"] == pytest.approx(10 * 10**9, abs=10**8)

    # The first timer woke the run: the second sleep is sent again under its key.
    again = FakeChannel()
    assert await run(two_sleeps, again, met=["sleep:1"]) is RunOutcome.SUSPENDED
    assert again.kinds() == ["suspend_run"]
    assert keys(again.suspensions()[0]) == ["sleep:2"]

    done = FakeChannel()
    assert await run(two_sleeps, done, met=["sleep:1", "sleep:2"]) is RunOutcome.COMPLETED
    assert done.kinds() == ["record_step", "complete_run"]


@workflow
async def nested(ctx: WorkflowContext) -> list[Any]:
    """A step result travels through several layers of gather and tasks before the
    workflow calls its next step, while a sleep is pending."""

    async def relay(value: str) -> str:
        await asyncio.sleep(0)
        return value

    async def layer(depth: int) -> str:
        if depth == 0:
            return await note("leaf")
        [inner] = await asyncio.gather(layer(depth - 1))
        return await asyncio.create_task(relay(inner))

    async def then_step() -> str:
        await layer(3)
        return await note("next")

    return list(await asyncio.gather(ctx.sleep(60), then_step()))


async def test_no_suspension_while_a_step_result_is_on_its_way(channel: FakeChannel) -> None:
    assert await run(nested, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "record_step", "suspend_run"]
    assert calls == ["leaf", "next"]


@workflow
async def sleeps_aside(ctx: WorkflowContext) -> str:
    sleeper = asyncio.create_task(ctx.sleep(60))
    await asyncio.sleep(0)  # the sleep is pending now
    first = await note("first")
    second = await note("second")
    sleeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sleeper
    return first + second


async def test_a_cancelled_sleep_no_longer_holds_the_run(channel: FakeChannel) -> None:
    assert await run(sleeps_aside, channel) is RunOutcome.COMPLETED
    assert channel.kinds() == ["record_step", "record_step", "complete_run"]


# -- a loop of steps and sleeps -----------------------------------------------------------

LOOPS = 200


@workflow
async def ticker(ctx: WorkflowContext) -> int:
    for index in range(LOOPS):
        await note(f"tick-{index}")
        await ctx.sleep(0.01)
    return LOOPS


def ticks(count: int) -> dict[str, str]:
    return {("note" if i == 0 else f"note#{i + 1}"): f"tick-{i}" for i in range(count)}


async def test_a_long_loop_replays_its_journal_without_running_anything(
    channel: FakeChannel,
) -> None:
    met = [f"sleep:{i}" for i in range(1, LOOPS)]
    assert await run(ticker, channel, journal=ticks(LOOPS), met=met) is RunOutcome.SUSPENDED
    assert calls == []
    assert channel.kinds() == ["suspend_run"]
    assert keys(channel.suspensions()[0]) == [f"sleep:{LOOPS}"]

    done = FakeChannel()
    met.append(f"sleep:{LOOPS}")
    assert await run(ticker, done, journal=ticks(LOOPS), met=met) is RunOutcome.COMPLETED
    assert done.kinds() == ["complete_run"]


# -- what runs after a suspension ---------------------------------------------------------


@workflow
async def tidy(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(60)
    except Exception:
        calls.append("caught")  # never: the suspension is not an Exception
    finally:
        calls.append("finally")
        await note("cleanup")  # raises the suspension again: never runs, never recorded
    return "done"


@workflow
async def returns_in_finally(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(60)
    finally:
        return "returned from finally"  # noqa: B012 - what the test is about


@workflow
async def converts_the_signal(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(60)
    except BaseException as exc:
        calls.append(type(exc).__name__)
        await ctx.sleep(1)  # also raises at once
        raise ValueError("turned into an error") from exc
    return "done"


@pytest.mark.parametrize("wf", [tidy, returns_in_finally, converts_the_signal])
async def test_nothing_is_recorded_after_the_suspension(wf: Any, channel: FakeChannel) -> None:
    assert await run(wf, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["suspend_run"]  # no record_step, complete_run or fail_run
    assert "caught" not in calls and "cleanup" not in calls


async def test_the_suspension_reaches_workflow_code_as_run_suspended(
    channel: FakeChannel,
) -> None:
    await run(converts_the_signal, channel)
    assert calls == ["RunSuspended"]


@workflow
async def stuck_in_finally(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(60)
    finally:
        calls.append("finally")
        await asyncio.Event().wait()  # neither a step nor a sleep: never ends by itself
    return "done"


async def test_a_coroutine_stuck_after_the_suspension_is_cancelled(channel: FakeChannel) -> None:
    assert await run(stuck_in_finally, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["suspend_run"]
    assert calls == ["finally"]


# -- steps cannot sleep ---------------------------------------------------------------


@workflow
async def sleepy_step(ctx: WorkflowContext) -> str:
    @ctx.step(name="inner")
    async def inner() -> None:
        await ctx.sleep(1)

    try:
        await inner()
    except WorkflowContextError as exc:
        return str(exc)
    return "slept"


async def test_a_step_body_cannot_sleep(channel: FakeChannel) -> None:
    assert await run(sleepy_step, channel) is RunOutcome.COMPLETED
    error = channel.recorded()["inner"].error
    assert error.type == "stepd.errors.WorkflowContextError"
    assert "inside the body of step 'inner'" in error.message
    assert "ctx.sleep()" in channel.final().complete_run.result.json


captured: list[WorkflowContext] = []


@workflow
async def leaks_ctx(ctx: WorkflowContext) -> None:
    captured.append(ctx)


async def test_a_ctx_used_outside_its_run_refuses_to_sleep(channel: FakeChannel) -> None:
    captured.clear()
    await run(leaks_ctx, channel)
    with pytest.raises(WorkflowContextError, match="outside the workflow code of run run-1"):
        await captured[0].sleep(1)


# -- answers, abandon, drain ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "logged"),
    [
        (worker_service_pb2.COMMAND_STATUS_LEASE_LOST, False),
        (worker_service_pb2.COMMAND_STATUS_INVALID, True),
        (worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR, True),
    ],
)
async def test_a_refused_suspension_abandons_the_run(
    status: worker_service_pb2.CommandStatus.ValueType,
    logged: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        if command.HasField("suspend_run"):
            return worker_service_pb2.CommandResult(status=status, message="nope")
        return ok()

    channel = FakeChannel(respond)
    executor = executor_for(tidy, channel)
    with caplog.at_level(logging.DEBUG, logger="stepd.worker"):
        assert await asyncio.wait_for(executor.execute(), 5) is RunOutcome.ABANDONED
    assert channel.kinds() == ["suspend_run"]
    assert calls == ["finally"]
    assert not executor.suspended and executor.abandoned
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errors) is logged
    if logged:
        assert "suspend_run: nope" in errors[0].getMessage()


async def test_release_while_the_suspension_is_on_its_way_sends_nothing() -> None:
    channel = answer_later("suspend_run")
    executor = executor_for(nap, channel, input=30)
    task = asyncio.create_task(executor.execute())
    await asyncio.sleep(0.02)
    assert channel.kinds() == ["record_step", "suspend_run"]
    assert executor.release() is False
    channel.resolve(2, ok())
    assert await asyncio.wait_for(task, 5) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "suspend_run"]


async def test_abandon_while_sleeping_cancels_and_sends_nothing_more() -> None:
    channel = answer_later("suspend_run")
    executor = executor_for(tidy, channel)
    task = asyncio.create_task(executor.execute())
    await asyncio.sleep(0.02)
    assert channel.kinds() == ["suspend_run"]
    executor.abandon()  # e.g. the server cancelled the run
    # The cancellation unwinds the coroutine; the cleanup step in its finally block
    # raises RunAbandoned instead of running.
    assert await asyncio.wait_for(task, 5) is RunOutcome.ABANDONED
    channel.resolve(1, ok())  # too late: the answer changes nothing
    await asyncio.sleep(0.01)
    assert channel.kinds() == ["suspend_run"]
    assert not executor.suspended
    assert calls == ["finally"]  # its cleanup step was not run


async def test_a_sleeping_run_suspends_instead_of_being_released_on_drain(
    channel: FakeChannel,
) -> None:
    executor = executor_for(nap, channel, input=30, journal={"note": "before"})
    executor.drain()
    assert await asyncio.wait_for(executor.execute(), 5) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["suspend_run"]


async def test_drain_with_a_step_in_flight_beside_a_sleep_records_then_suspends(
    channel: FakeChannel,
) -> None:
    executor = executor_for(step_and_sleep, channel)
    task = asyncio.create_task(executor.execute())
    await asyncio.sleep(0.02)
    assert calls == ["g:start"]
    executor.drain()
    gate.set()
    assert await asyncio.wait_for(task, 5) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "suspend_run"]


async def test_a_met_sleep_the_code_never_calls_is_non_deterministic(
    channel: FakeChannel,
) -> None:
    executor = executor_for(nap, channel, input=30, journal={"note": "before"}, met=["sleep:7"])
    # The code waits on sleep:1 where the journal says sleep:7 was met: held, nothing sent.
    assert await asyncio.wait_for(executor.execute(), 5) is RunOutcome.NON_DETERMINISTIC
    assert channel.commands == []
    assert "next met wait is sleep:7, but the code waits on sleep:1" in str(
        executor.non_determinism
    )

    @workflow(name="no_sleep")
    async def no_sleep(ctx: WorkflowContext) -> str:
        return await note("x")

    held = executor_for(no_sleep, FakeChannel(), met=["sleep:1"])
    assert await asyncio.wait_for(held.execute(), 5) is RunOutcome.NON_DETERMINISTIC
    assert held.non_determinism is not None
    assert "sleep:1" in str(held.non_determinism)
