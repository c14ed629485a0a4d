"""Signal waits, several waits at once, and custom history entries in the replay engine
(no gRPC): wait keys, replay of met waits in journal order, timeouts, first-of, and
record_event keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from stepd._phase import RunOutcome
from stepd._replay import RunExecutor
from stepd.errors import PayloadError, StepdError, WaitTimeoutError, WorkflowContextError
from stepd.v1 import types_pb2, worker_service_pb2

from .conftest import FakeChannel, make_task, ok

calls: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


@step
async def note(label: str) -> str:
    calls.append(label)
    return label


def executor_for(wf: Any, channel: FakeChannel, **task: Any) -> RunExecutor:
    return RunExecutor(wf, make_task(wf.name, wf.version, **task), channel)


async def run(wf: Any, channel: FakeChannel, **task: Any) -> RunOutcome:
    return await asyncio.wait_for(executor_for(wf, channel, **task).execute(), 5)


def result_of(channel: FakeChannel) -> str:
    final = channel.final()
    assert final.HasField("complete_run"), channel.kinds()
    return final.complete_run.result.json


def answer_later(*kinds: str) -> FakeChannel:
    """A channel that leaves the commands of these kinds unanswered."""
    return FakeChannel(lambda c: None if c.WhichOneof("command") in kinds else ok())


# -- one signal -----------------------------------------------------------------------------


class Approval(BaseModel):
    by: str
    amount: int


@workflow
async def approval(ctx: WorkflowContext) -> str:
    await note("asked")
    answer = await ctx.wait_for_signal("approve", type=Approval)
    return await note(f"{answer.by}:{answer.amount}")


async def test_a_signal_wait_suspends_the_run_with_a_signal_condition(
    channel: FakeChannel,
) -> None:
    assert await run(approval, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "suspend_run"]
    assert channel.waits() == [{"signal:1": "approve"}]
    [wait] = channel.final().suspend_run.waits
    assert wait.WhichOneof("condition") == "signal"


async def test_a_met_signal_wait_returns_its_payload_on_replay(channel: FakeChannel) -> None:
    met = [("signal:1", {"by": "ada", "amount": 7})]
    assert await run(approval, channel, journal={"note": "asked"}, met=met) is (
        RunOutcome.COMPLETED
    )
    assert calls == ["ada:7"]
    assert channel.kinds() == ["record_step", "complete_run"]
    assert result_of(channel) == '"ada:7"'


async def test_a_payload_that_does_not_fit_the_type_raises_in_the_workflow(
    channel: FakeChannel,
) -> None:
    met = [("signal:1", {"by": "ada"})]  # no amount
    assert await run(approval, channel, journal={"note": "asked"}, met=met) is (RunOutcome.FAILED)
    error = channel.final().fail_run.error
    assert error.type == "stepd.errors.PayloadError"
    assert "amount" in error.message


@workflow
async def untyped(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_signal("data")


@pytest.mark.parametrize("payload", [None, 3, "text", [1, {"a": None}]])
async def test_an_untyped_signal_returns_plain_json(channel: FakeChannel, payload: Any) -> None:
    assert await run(untyped, channel, met=[("signal:1", payload)]) is RunOutcome.COMPLETED
    assert result_of(channel) == json.dumps(payload, separators=(",", ":"))


# -- wait keys ------------------------------------------------------------------------------


@workflow
async def keyed(ctx: WorkflowContext) -> list[Any]:
    await ctx.sleep(0)  # sleep:1, at once: sleeps and signals count apart
    return list(
        await asyncio.gather(
            ctx.wait_for_signal("a"),  # signal:1
            ctx.sleep(30),  # sleep:2
            ctx.wait_for_signal("b", timeout=60),  # signal:2 and signal:2:timeout
            ctx.wait_for_signal("a", timeout=timedelta(minutes=2)),  # signal:3 (+ timeout)
        )
    )


async def test_wait_keys_of_signals_and_their_timeouts(channel: FakeChannel) -> None:
    start = time.time_ns()
    assert await run(keyed, channel) is RunOutcome.SUSPENDED
    end = time.time_ns()
    [waits] = channel.waits()
    assert list(waits) == [
        "signal:1",
        "sleep:2",
        "signal:2",
        "signal:2:timeout",
        "signal:3",
        "signal:3:timeout",
    ]
    assert waits["signal:1"] == "a" and waits["signal:2"] == "b" and waits["signal:3"] == "a"
    assert start + 60 * 10**9 <= int(waits["signal:2:timeout"]) <= end + 60 * 10**9
    assert start + 120 * 10**9 <= int(waits["signal:3:timeout"]) <= end + 120 * 10**9


async def test_gathered_signal_waits_replay_one_by_one(channel: FakeChannel) -> None:
    met: list[Any] = [("signal:3", "third"), "sleep:2"]
    assert await run(keyed, channel, met=met) is RunOutcome.SUSPENDED
    # Met ones are not sent again; a timer keeps its key (the server keeps its time).
    assert [list(w) for w in channel.waits()] == [["signal:1", "signal:2", "signal:2:timeout"]]

    done = FakeChannel()
    met += [("signal:1", "first"), "signal:2:timeout"]
    assert await run(keyed, done, met=met) is RunOutcome.FAILED  # the timeout is not caught
    error = done.final().fail_run.error
    assert error.type == "stepd.errors.WaitTimeoutError"
    assert error.message == "no signal 'b' came within 60 s (wait signal:2)"


# -- timeouts -------------------------------------------------------------------------------


@workflow
async def deadline(ctx: WorkflowContext) -> str:
    try:
        value = await ctx.wait_for_signal("go", timeout=3600)
    except WaitTimeoutError as exc:
        return await note(f"timed out: {exc.wait_key} {exc.signal} {exc.timeout}")
    return await note(f"got {value}")


async def test_the_timeout_branch_on_replay(channel: FakeChannel) -> None:
    assert await run(deadline, channel, met=["signal:1:timeout"]) is RunOutcome.COMPLETED
    assert calls == ["timed out: signal:1 go 3600.0"]
    assert channel.kinds() == ["record_step", "complete_run"]


async def test_the_signal_branch_of_a_wait_with_a_timeout(channel: FakeChannel) -> None:
    assert await run(deadline, channel, met=[("signal:1", 5)]) is RunOutcome.COMPLETED
    assert calls == ["got 5"]


async def test_a_server_side_timed_out_result_is_a_timeout(channel: FakeChannel) -> None:
    met = [types_pb2.WaitResult(wait_key="signal:1", timed_out=True)]
    assert await run(deadline, channel, met=met) is RunOutcome.COMPLETED
    assert calls == ["timed out: signal:1 go 3600.0"]


def test_wait_timeout_error_is_a_stepd_error_and_a_timeout_error() -> None:
    assert issubclass(WaitTimeoutError, StepdError)
    assert issubclass(WaitTimeoutError, TimeoutError)
    assert str(WaitTimeoutError("m", wait_key="signal:1")) == "m"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda ctx: ctx.wait_for_signal(""), ValueError),
        (lambda ctx: ctx.wait_for_signal(3), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=0), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=-1), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=timedelta(0)), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=float("nan")), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=float("inf")), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=10**12), ValueError),
        (lambda ctx: ctx.wait_for_signal("x", timeout="1"), TypeError),
        (lambda ctx: ctx.wait_for_signal("x", timeout=True), TypeError),
        (lambda ctx: ctx.record(""), ValueError),
        (lambda ctx: ctx.record("x", object()), PayloadError),
        (lambda ctx: ctx.log(3), TypeError),
    ],
    ids=[
        "empty-name",
        "int-name",
        "zero",
        "negative",
        "zero-timedelta",
        "nan",
        "inf",
        "after-year-9999",
        "str",
        "bool",
        "record-empty-name",
        "record-not-json",
        "log-not-str",
    ],
)
def test_bad_arguments_raise_at_the_call(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(WorkflowContext("r", "wf", "1"))


async def test_a_context_made_by_hand_receives_no_signal() -> None:
    ctx = WorkflowContext("r", "wf", "1")
    with pytest.raises(WaitTimeoutError, match=r"no signal 'x' came within 0\.02 s"):
        await ctx.wait_for_signal("x", timeout=0.02)
    assert await ctx.first(ctx.wait_for_signal("x"), ctx.sleep(0.01)) == (1, None)
    ctx.log("goes nowhere", n=1)
    ctx.record("progress", {"done": 1})


# -- several waits at once ------------------------------------------------------------------


@workflow
async def race(ctx: WorkflowContext) -> str:
    index, value = await ctx.first(ctx.sleep(60), ctx.wait_for_signal("approve"))
    if index == 0:
        return await note("slept")
    return await note(f"signal {value}")


async def test_first_suspends_with_both_waits(channel: FakeChannel) -> None:
    assert await run(race, channel) is RunOutcome.SUSPENDED
    [waits] = channel.waits()
    assert list(waits) == ["sleep:1", "signal:1"]
    assert waits["signal:1"] == "approve"


async def test_first_replays_the_sleep_branch(channel: FakeChannel) -> None:
    assert await run(race, channel, met=["sleep:1"]) is RunOutcome.COMPLETED
    assert calls == ["slept"]
    assert channel.kinds() == ["record_step", "complete_run"]


async def test_first_replays_the_signal_branch(channel: FakeChannel) -> None:
    assert await run(race, channel, met=[("signal:1", "yes")]) is RunOutcome.COMPLETED
    assert calls == ["signal yes"]


@workflow
async def first_then_wait(ctx: WorkflowContext) -> list[Any]:
    index, _ = await ctx.first(ctx.sleep(60), ctx.wait_for_signal("approve"))
    await note(f"first:{index}")
    # The cancelled loser (signal:1) is not waited on again: a signal sent now is
    # consumed by signal:2.
    return [index, await ctx.wait_for_signal("approve")]


async def test_a_cancelled_loser_is_not_sent_again(channel: FakeChannel) -> None:
    assert await run(first_then_wait, channel, met=["sleep:1"]) is RunOutcome.SUSPENDED
    assert calls == ["first:0"]
    assert channel.waits() == [{"signal:2": "approve"}]

    done = FakeChannel()
    met = ["sleep:1", ("signal:2", "late")]
    assert await run(first_then_wait, done, journal={"note": "first:0"}, met=met) is (
        RunOutcome.COMPLETED
    )
    assert result_of(done) == '[0,"late"]'


@workflow
async def first_with_a_timeout(ctx: WorkflowContext) -> str:
    try:
        index, value = await ctx.first(
            ctx.wait_for_signal("a", timeout=30), ctx.wait_for_signal("b")
        )
    except WaitTimeoutError:
        return "timeout"
    return f"{index}:{value}"


async def test_first_raises_the_winners_error(channel: FakeChannel) -> None:
    assert await run(first_with_a_timeout, channel) is RunOutcome.SUSPENDED
    assert list(channel.waits()[0]) == ["signal:1", "signal:1:timeout", "signal:2"]

    timed_out = FakeChannel()
    assert await run(first_with_a_timeout, timed_out, met=["signal:1:timeout"]) is (
        RunOutcome.COMPLETED
    )
    assert result_of(timed_out) == '"timeout"'

    second = FakeChannel()
    assert await run(first_with_a_timeout, second, met=[("signal:2", 9)]) is (RunOutcome.COMPLETED)
    assert result_of(second) == '"1:9"'


@workflow
async def raw_wait(ctx: WorkflowContext) -> list[str]:
    """asyncio.wait over tasks; the loser is kept and awaited later."""
    signal = asyncio.create_task(ctx.wait_for_signal("go"))
    sleep = asyncio.create_task(ctx.sleep(60))
    done, pending = await asyncio.wait({signal, sleep}, return_when=asyncio.FIRST_COMPLETED)
    first = "signal" if signal in done else "sleep"
    await note(f"first:{first}")
    loser = pending.pop()
    await loser  # still pending in the SDK: waited for again in the next suspension
    return [first, "both"]


async def test_asyncio_wait_suspends_with_both_and_keeps_the_loser(channel: FakeChannel) -> None:
    assert await run(raw_wait, channel) is RunOutcome.SUSPENDED
    assert list(channel.waits()[0]) == ["signal:1", "sleep:1"]

    woken = FakeChannel()
    assert await run(raw_wait, woken, met=["sleep:1"]) is RunOutcome.SUSPENDED
    assert calls == ["first:sleep"]
    assert woken.waits() == [{"signal:1": "go"}]  # the loser, re-sent under its key

    calls.clear()
    done = FakeChannel()
    met = ["sleep:1", ("signal:1", None)]
    assert await run(raw_wait, done, journal={"note": "first:sleep"}, met=met) is (
        RunOutcome.COMPLETED
    )
    assert calls == []
    assert result_of(done) == '["sleep","both"]'


@workflow
async def reminders(ctx: WorkflowContext) -> int:
    """Remind every hour until approved: the signal task is kept across the loop."""
    approved = asyncio.create_task(ctx.wait_for_signal("approve"))
    count = 0
    while True:
        timer = asyncio.create_task(ctx.sleep(3600))
        done, _ = await asyncio.wait({approved, timer}, return_when=asyncio.FIRST_COMPLETED)
        if approved in done:
            timer.cancel()
            return count
        count += 1
        await note(f"reminder {count}")


async def test_met_waits_replay_one_by_one_even_when_a_kept_loser_was_met_later(
    channel: FakeChannel,
) -> None:
    # The first suspension woke on sleep:1; the signal came during the second one. Both
    # are met in the journal: replay must see sleep:1 win the first round, as it did.
    journal = {"note": "reminder 1"}
    met = ["sleep:1", ("signal:1", None)]
    assert await run(reminders, channel, journal=journal, met=met) is RunOutcome.COMPLETED
    assert calls == []
    assert result_of(channel) == "1"


def met_at(key: str, ms: int, payload: Any = None) -> types_pb2.WaitResult:
    wait = types_pb2.WaitResult(wait_key=key, payload=types_pb2.Payload(json=json.dumps(payload)))
    wait.met_time.FromMilliseconds(ms)
    return wait


async def test_met_waits_replay_in_the_order_they_were_met_whatever_the_journal_order(
    channel: FakeChannel,
) -> None:
    # A server may list met waits in the order they were first registered (signal:1
    # was registered before sleep:1 and sleep:2); met_time says what came first.
    journal = {"note": "reminder 1", "note#2": "reminder 2"}
    met = [met_at("signal:1", 3000), met_at("sleep:1", 1000), met_at("sleep:2", 2000)]
    assert await run(reminders, channel, journal=journal, met=met) is RunOutcome.COMPLETED
    assert calls == []
    assert result_of(channel) == "2"


async def test_the_reminder_loop_suspends_with_the_signal_and_the_next_timer(
    channel: FakeChannel,
) -> None:
    met = ["sleep:1", "sleep:2"]
    journal = {"note": "reminder 1", "note#2": "reminder 2"}
    assert await run(reminders, channel, journal=journal, met=met) is RunOutcome.SUSPENDED
    assert list(channel.waits()[0]) == ["signal:1", "sleep:3"]


@workflow
async def cancelled_wait(ctx: WorkflowContext) -> str:
    waiting = asyncio.create_task(ctx.wait_for_signal("x", timeout=30))
    await asyncio.sleep(0)  # both of its waits are pending now
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await ctx.sleep(10)
    return "done"


async def test_a_cancelled_signal_wait_drops_both_of_its_waits(channel: FakeChannel) -> None:
    assert await run(cancelled_wait, channel) is RunOutcome.SUSPENDED
    assert list(channel.waits()[0]) == ["sleep:1"]


@workflow
async def lone_step(ctx: WorkflowContext) -> str:
    return await note("x")


async def test_a_met_signal_the_code_never_waits_for_holds_the_run(
    channel: FakeChannel,
) -> None:
    executor = executor_for(approval, channel, journal={"note": "asked"}, met=["signal:2"])
    assert await asyncio.wait_for(executor.execute(), 5) is RunOutcome.NON_DETERMINISTIC
    assert channel.commands == []
    assert "next met wait is signal:2, but the code waits on signal:1" in str(
        executor.non_determinism
    )

    ended = executor_for(lone_step, FakeChannel(), met=["signal:1"])
    assert await asyncio.wait_for(ended.execute(), 5) is RunOutcome.NON_DETERMINISTIC
    assert "signal:1" in str(ended.non_determinism)


# -- custom history entries -----------------------------------------------------------------


@workflow
async def chatty(ctx: WorkflowContext) -> str:
    ctx.log("starting", order=7)
    first = await note("one")
    ctx.record("progress", {"done": 1, "total": 2})
    await ctx.sleep(60)
    ctx.log("woke up")
    return first + await note("two")


async def test_entries_get_keys_in_call_order(channel: FakeChannel) -> None:
    assert await run(chatty, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_event", "record_step", "record_event", "suspend_run"]
    assert channel.events() == [
        ("entry:1", "log", {"message": "starting", "order": 7}),
        ("entry:2", "progress", {"done": 1, "total": 2}),
    ]


async def test_a_replay_sends_the_same_entry_keys_again(channel: FakeChannel) -> None:
    assert await run(chatty, channel, journal={"note": "one"}, met=["sleep:1"]) is (
        RunOutcome.COMPLETED
    )
    assert calls == ["two"]
    assert [key for key, _, _ in channel.events()] == ["entry:1", "entry:2", "entry:3"]
    assert channel.events()[2] == ("entry:3", "log", {"message": "woke up"})
    assert channel.kinds()[-1] == "complete_run"


async def test_an_entry_does_not_hold_the_workflow_but_the_end_waits_for_it() -> None:
    channel = answer_later("record_event")
    task = asyncio.create_task(
        executor_for(chatty, channel, journal={"note": "one"}, met=["sleep:1"]).execute()
    )
    await asyncio.sleep(0.05)
    # The steps went on without the answers; complete_run waits for them.
    assert channel.kinds() == ["record_event", "record_event", "record_event", "record_step"]
    for command_id in (1, 2):
        channel.resolve(command_id, ok())
    await asyncio.sleep(0.02)
    assert channel.kinds()[-1] == "record_step"
    channel.resolve(3, ok())
    assert await asyncio.wait_for(task, 5) is RunOutcome.COMPLETED
    assert channel.kinds()[-1] == "complete_run"


async def test_the_run_suspends_only_once_its_entries_are_acknowledged() -> None:
    channel = answer_later("record_event")
    task = asyncio.create_task(executor_for(chatty, channel).execute())
    await asyncio.sleep(0.05)
    assert channel.kinds() == ["record_event", "record_step", "record_event"]
    channel.resolve(1, ok())
    await asyncio.sleep(0.02)
    assert "suspend_run" not in channel.kinds()
    channel.resolve(3, ok())
    assert await asyncio.wait_for(task, 5) is RunOutcome.SUSPENDED
    assert channel.kinds()[-1] == "suspend_run"


@workflow
async def logs_in_finally(ctx: WorkflowContext) -> str:
    try:
        await ctx.sleep(60)
    finally:
        ctx.log("unwinding")  # after the suspension: not sent, does not raise
        calls.append("after log")
    return "done"


async def test_nothing_is_written_after_the_suspension(channel: FakeChannel) -> None:
    assert await run(logs_in_finally, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["suspend_run"]
    assert calls == ["after log"]


@workflow
async def logging_step(ctx: WorkflowContext) -> str:
    @ctx.step(name="inner")
    async def inner() -> None:
        ctx.log("from a step")

    try:
        await inner()
    except WorkflowContextError as exc:
        return str(exc)
    return "logged"


async def test_a_step_body_cannot_write_history(channel: FakeChannel) -> None:
    assert await run(logging_step, channel) is RunOutcome.COMPLETED
    assert channel.kinds() == ["record_step", "complete_run"]
    assert "ctx.log() was called inside the body of step 'inner'" in result_of(channel)


@pytest.mark.parametrize(
    ("status", "logged"),
    [
        (worker_service_pb2.COMMAND_STATUS_LEASE_LOST, False),
        (worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR, True),
    ],
)
async def test_a_lost_or_failed_entry_abandons_the_run(
    status: worker_service_pb2.CommandStatus.ValueType,
    logged: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        if command.HasField("record_event"):
            return worker_service_pb2.CommandResult(status=status, message="gone")
        return ok()

    channel = FakeChannel(respond)
    executor = executor_for(chatty, channel, journal={"note": "one"}, met=["sleep:1"])
    # abandon() cancels the run's task, as for any refused command
    with (
        caplog.at_level(logging.ERROR, logger="stepd.worker"),
        pytest.raises(asyncio.CancelledError),
    ):
        await asyncio.wait_for(executor.execute(), 5)
    assert executor.abandoned
    assert "complete_run" not in channel.kinds()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(errors) is logged
    if logged:
        assert "INTERNAL_ERROR to record_event: gone" in errors[0]


async def test_an_invalid_entry_is_dropped_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        if command.record_event.name == "progress":
            return worker_service_pb2.CommandResult(
                status=worker_service_pb2.COMMAND_STATUS_INVALID, message="payload too big"
            )
        return ok()

    channel = FakeChannel(respond)
    with caplog.at_level(logging.ERROR, logger="stepd.worker"):
        assert await run(chatty, channel) is RunOutcome.SUSPENDED
    assert channel.kinds()[-1] == "suspend_run"
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "custom entry dropped" in error and "payload too big" in error
