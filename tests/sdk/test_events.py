"""Event waits in the replay engine (no gRPC): wait keys, ``since`` taken at the call and
recorded as ``event:N:since``, ``match`` as a JSON object, payloads, timeouts and
first-of."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from stepd._phase import RunOutcome
from stepd._replay import RunExecutor
from stepd.errors import PayloadError, WaitTimeoutError, WorkflowDefinitionError
from stepd.v1 import types_pb2, worker_service_pb2

from .conftest import FakeChannel, make_task, ok, result_record

MS = 1_000_000

calls: list[str] = []
started: list[int] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    started.clear()


@step
async def note(label: str) -> str:
    calls.append(label)
    return label


async def run(wf: Any, channel: FakeChannel, **task: Any) -> RunOutcome:
    executor = RunExecutor(wf, make_task(wf.name, wf.version, **task), channel)
    return await asyncio.wait_for(executor.execute(), 5)


def since_of(channel: FakeChannel) -> dict[str, int]:
    """The event wait starts recorded (``event:N:since``, Unix ms), by key in order."""
    return {
        key: json.loads(record.result.json)
        for key, record in channel.recorded().items()
        if key.endswith(":since")
    }


def result_of(channel: FakeChannel) -> str:
    final = channel.final()
    assert final.HasField("complete_run"), channel.kinds()
    return final.complete_run.result.json


# -- keys, since and match ------------------------------------------------------------------


@dataclass
class Tier:
    level: int


@workflow
async def keyed(ctx: WorkflowContext) -> list[Any]:
    return list(
        await asyncio.gather(
            ctx.wait_for_event("a"),  # event:1, any payload
            ctx.wait_for_signal("s"),  # signal:1: events and signals count apart
            ctx.wait_for_event(  # event:2 and event:2:timeout
                "b", match={"order": 7, "tier": Tier(2), "tags": ["x"]}, timeout=60
            ),
            ctx.sleep(30),  # sleep:1
            ctx.wait_for_event("a", match={}, timeout=timedelta(minutes=2)),  # event:3 (+)
        )
    )


async def test_wait_keys_match_and_since_of_event_waits(channel: FakeChannel) -> None:
    start = time.time_ns()
    assert await run(keyed, channel) is RunOutcome.SUSPENDED
    end = time.time_ns()
    [waits] = channel.waits()
    assert list(waits) == [
        "event:1",
        "signal:1",
        "event:2",
        "event:2:timeout",
        "sleep:1",
        "event:3",
        "event:3:timeout",
    ]
    [events] = channel.event_waits()
    assert {key: (name, match) for key, (name, match, _) in events.items()} == {
        "event:1": ("a", ""),
        "event:2": ("b", '{"order":7,"tier":{"level":2},"tags":["x"]}'),
        "event:3": ("a", ""),  # an empty match matches every event of the name
    }
    for _, _, since in events.values():
        assert start // MS * MS <= since <= end  # whole milliseconds
    # Each start is recorded at the call, before the run suspends, in call order.
    assert channel.kinds() == ["record_step"] * 3 + ["suspend_run"]
    assert since_of(channel) == {
        f"{key}:since": since // MS for key, (_, _, since) in events.items()
    }
    # The timeout's timer starts from the same instant as the wait.
    assert waits["event:2:timeout"] == events["event:2"][2] + 60 * 10**9
    assert waits["event:3:timeout"] == events["event:3"][2] + 120 * 10**9


@step
async def slow(label: str) -> str:
    started.append(time.time_ns())
    await asyncio.sleep(0.05)
    return label


@workflow
async def wait_during_a_step(ctx: WorkflowContext) -> Any:
    waiting = ctx.wait_for_event("ping")  # the wait begins here...
    _, payload = await asyncio.gather(slow("work"), waiting)  # ...not when the run suspends
    return payload


async def test_since_is_the_time_of_the_call_not_of_the_suspension(
    channel: FakeChannel,
) -> None:
    before = time.time_ns()
    assert await run(wait_during_a_step, channel) is RunOutcome.SUSPENDED
    # The start is recorded at the call, before the step body even began.
    assert channel.step_keys() == ["event:1:since", "slow"]
    assert channel.kinds() == ["record_step", "record_step", "suspend_run"]
    [[(_, _, since)]] = [list(w.values()) for w in channel.event_waits()]
    recorded = channel.recorded()["slow"]
    assert before // MS * MS <= since <= started[0] < recorded.end_time.ToNanoseconds()
    assert since_of(channel) == {"event:1:since": since // MS}


async def test_a_replay_reads_the_recorded_since_back_and_sends_nothing_for_it() -> None:
    first, second = FakeChannel(), FakeChannel()
    assert await run(keyed, first) is RunOutcome.SUSPENDED
    await asyncio.sleep(0.005)
    journal = since_of(first)  # the starts, as the server keeps them
    assert await run(keyed, second, journal=journal, met=["sleep:1"]) is RunOutcome.SUSPENDED
    assert second.kinds() == ["suspend_run"]  # no start recorded again
    [before], [after] = first.event_waits(), second.event_waits()
    assert after == before  # same keys, matches and starts
    assert second.waits()[0]["event:2:timeout"] == first.waits()[0]["event:2:timeout"]


async def test_a_journal_without_the_start_records_it_on_the_replay() -> None:
    # A run whose wait began before its start was recorded (an older SDK): the replay
    # records the time of its own call, once, and later replays keep that one.
    old = FakeChannel()
    assert await run(keyed, old, met=["sleep:1"]) is RunOutcome.SUSPENDED
    assert list(since_of(old)) == ["event:1:since", "event:2:since", "event:3:since"]


@workflow
async def ping_wait(ctx: WorkflowContext) -> Any:
    return await ctx.wait_for_event("ping")


async def test_the_wait_is_sent_only_once_its_start_is_acknowledged() -> None:
    channel = FakeChannel(lambda c: None if c.HasField("record_step") else ok())
    executor = RunExecutor(ping_wait, make_task(ping_wait.name, ping_wait.version), channel)
    running = asyncio.create_task(executor.execute())
    for _ in range(200):  # many SETTLE_HOPS: quiescence must not be reached
        await asyncio.sleep(0)
    assert channel.kinds() == ["record_step"]
    channel.resolve(1, ok())
    assert await asyncio.wait_for(running, 5) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "suspend_run"]


async def test_the_start_recorded_first_wins() -> None:
    stored = 1_700_000_000_123

    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        if command.HasField("record_step"):
            return worker_service_pb2.CommandResult(
                status=worker_service_pb2.COMMAND_STATUS_DUPLICATE,
                recorded_step=result_record("event:1:since", stored),
            )
        return ok()

    channel = FakeChannel(respond)
    assert await run(ping_wait, channel) is RunOutcome.SUSPENDED
    assert channel.event_waits() == [{"event:1": ("ping", "", stored * MS)}]


async def test_a_lost_lease_on_the_start_abandons_the_run() -> None:
    lost = worker_service_pb2.CommandResult(
        status=worker_service_pb2.COMMAND_STATUS_LEASE_LOST, message="re-queued"
    )
    channel = FakeChannel(lambda c: lost if c.HasField("record_step") else ok())
    assert await run(ping_wait, channel) is RunOutcome.ABANDONED
    assert channel.kinds() == ["record_step"]


async def test_a_recorded_start_the_code_never_reaches_holds_the_run(
    channel: FakeChannel,
) -> None:
    @workflow(name="no_wait")
    async def no_wait(ctx: WorkflowContext) -> str:
        return "done"

    journal = {"event:1:since": 1_700_000_000_000}
    assert await run(no_wait, channel, journal=journal) is RunOutcome.NON_DETERMINISTIC
    assert channel.commands == []


@pytest.mark.parametrize("name", ["event:1:since", "event:2", "sleep:1", "hook:3:timeout"])
def test_a_step_cannot_take_the_name_of_an_sdk_key(name: str) -> None:
    async def body() -> None:
        return None

    with pytest.raises(WorkflowDefinitionError, match="the SDK's own keys"):
        step(name=name)(body)


@pytest.mark.parametrize(
    ("match", "error"),
    [
        ([("order", 7)], TypeError),
        ("order=7", TypeError),
        ({1: "x"}, TypeError),
        ({"when": object()}, PayloadError),
    ],
    ids=["list", "str", "int-key", "not-json"],
)
def test_a_bad_match_raises_at_the_call(match: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        _ = WorkflowContext("r", "wf", "1").wait_for_event("x", match=match)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda ctx: ctx.wait_for_event(""), ValueError),
        (lambda ctx: ctx.wait_for_event(None), ValueError),
        (lambda ctx: ctx.wait_for_event("x", timeout=0), ValueError),
        (lambda ctx: ctx.wait_for_event("x", timeout="1"), TypeError),
    ],
    ids=["empty-name", "none-name", "zero-timeout", "str-timeout"],
)
def test_bad_arguments_raise_at_the_call(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(WorkflowContext("r", "wf", "1"))


async def test_a_context_made_by_hand_receives_no_event() -> None:
    ctx = WorkflowContext("r", "wf", "1")
    with pytest.raises(WaitTimeoutError, match=r"no event 'x' came within 0\.02 s") as caught:
        await ctx.wait_for_event("x", match={"a": 1}, timeout=0.02)
    assert (caught.value.event, caught.value.signal, caught.value.timeout) == ("x", None, 0.02)
    assert await ctx.first(ctx.wait_for_event("x"), ctx.sleep(0.01)) == (1, None)


# -- payloads and timeouts on replay ----------------------------------------------------------


class Paid(BaseModel):
    order: int
    amount: int


@workflow
async def order_paid(ctx: WorkflowContext, order: int) -> str:
    await note("invoiced")
    try:
        paid = await ctx.wait_for_event(
            "order.paid", match={"order": order}, timeout=3600, type=Paid
        )
    except WaitTimeoutError as exc:
        return await note(f"timed out: {exc.wait_key} {exc.event} {exc.timeout}")
    return await note(f"paid {paid.amount}")


async def test_a_met_event_wait_returns_its_typed_payload(channel: FakeChannel) -> None:
    met = [("event:1", {"order": 7, "amount": 30, "currency": "EUR"})]
    journal = {"note": "invoiced", "event:1:since": 1_700_000_000_000}
    outcome = await run(order_paid, channel, input=7, journal=journal, met=met)
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["paid 30"]
    assert channel.kinds() == ["record_step", "complete_run"]
    assert channel.step_keys() == ["note#2"]


async def test_the_timeout_branch_on_replay(channel: FakeChannel) -> None:
    met = ["event:1:timeout"]
    outcome = await run(order_paid, channel, input=7, journal={"note": "invoiced"}, met=met)
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["timed out: event:1 order.paid 3600.0"]


async def test_a_server_side_timed_out_result_is_a_timeout(channel: FakeChannel) -> None:
    met = [types_pb2.WaitResult(wait_key="event:1", timed_out=True)]
    outcome = await run(order_paid, channel, input=7, journal={"note": "invoiced"}, met=met)
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["timed out: event:1 order.paid 3600.0"]


async def test_an_uncaught_timeout_says_what_it_waited_for(channel: FakeChannel) -> None:
    @workflow(name="uncaught")
    async def uncaught(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for_event("order.paid", match={"order": 7}, timeout=60)

    assert await run(uncaught, channel, met=["event:1:timeout"]) is RunOutcome.FAILED
    error = channel.final().fail_run.error
    assert error.type == "stepd.errors.WaitTimeoutError"
    assert error.message == (
        "no event 'order.paid' matching {\"order\":7} came within 60 s (wait event:1)"
    )


async def test_a_payload_that_does_not_fit_the_type_raises_in_the_workflow(
    channel: FakeChannel,
) -> None:
    met = [("event:1", {"order": 7})]  # no amount
    outcome = await run(order_paid, channel, input=7, journal={"note": "invoiced"}, met=met)
    assert outcome is RunOutcome.FAILED
    assert channel.final().fail_run.error.type == "stepd.errors.PayloadError"


async def test_the_first_execution_suspends_with_the_event_and_its_timer(
    channel: FakeChannel,
) -> None:
    assert await run(order_paid, channel, input=7) is RunOutcome.SUSPENDED
    assert channel.step_keys() == ["note", "event:1:since"]
    assert channel.kinds() == ["record_step", "record_step", "suspend_run"]
    [waits] = channel.waits()
    assert list(waits) == ["event:1", "event:1:timeout"]
    [[(name, match, _)]] = [list(w.values()) for w in channel.event_waits()]
    assert (name, json.loads(match)) == ("order.paid", {"order": 7})


# -- several waits at once ------------------------------------------------------------------


@workflow
async def race(ctx: WorkflowContext) -> Any:
    index, value = await ctx.first(ctx.wait_for_event("done"), ctx.wait_for_signal("stop"))
    await note(f"{index}:{value}")
    return await ctx.wait_for_event("done")  # event:2: the loser event:1 was dropped


async def test_first_of_an_event_and_a_signal(channel: FakeChannel) -> None:
    assert await run(race, channel) is RunOutcome.SUSPENDED
    assert channel.waits() == [{"event:1": "done", "signal:1": "stop"}]

    after = FakeChannel()
    assert await run(race, after, met=[("signal:1", "now")]) is RunOutcome.SUSPENDED
    assert calls == ["1:now"]
    assert after.waits() == [{"event:2": "done"}]  # the cancelled event:1 is not sent

    done = FakeChannel()
    met = [("signal:1", "now"), ("event:2", {"n": 2})]
    assert await run(race, done, journal={"note": "1:now"}, met=met) is RunOutcome.COMPLETED
    assert result_of(done) == '{"n":2}'
