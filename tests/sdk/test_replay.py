"""The replay engine, driven by an in-memory command channel (no gRPC)."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from stepd._phase import RunOutcome
from stepd._replay import RunExecutor
from stepd.errors import PayloadError, StepFailedError
from stepd.v1 import types_pb2, worker_service_pb2

from .conftest import FakeChannel, error_record, make_task, ok, result_record

calls: list[str] = []


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


class Receipt(BaseModel):
    order_id: int
    total: int


@dataclass
class Order:
    id: int
    amount: int


class CardDeclined(Exception):
    pass


@step
async def validate(order: Order) -> None:
    calls.append("validate")


@step
async def charge(order: Order) -> int:
    calls.append("charge")
    return order.amount


@step
async def reserve(order: Order) -> str:
    calls.append("reserve")
    return f"stock-{order.id}"


@step
async def send(message: str, delay: float = 0) -> str:
    await asyncio.sleep(delay)
    calls.append(f"send:{message}")
    return message.upper()


@step
async def decline(order: Order) -> int:
    calls.append("decline")
    raise CardDeclined(f"card declined for {order.id}")


@step
async def refund(order: Order) -> None:
    calls.append("refund")


@workflow
async def process(ctx: WorkflowContext, order: Order) -> Receipt:
    await validate(order)
    paid, stock = await asyncio.gather(charge(order), reserve(order))
    assert stock == f"stock-{order.id}"
    return Receipt(order_id=order.id, total=paid)


async def run(
    wf: Any, channel: FakeChannel, **task: Any
) -> tuple[RunOutcome, worker_service_pb2.WorkerCommand]:
    executor = RunExecutor(wf, make_task(wf.name, wf.version, **task), channel)
    outcome = await executor.execute()
    return outcome, channel.final()


async def test_fresh_run_records_every_step_then_completes(channel: FakeChannel) -> None:
    outcome, final = await run(process, channel, input={"id": 1, "amount": 30})
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["validate", "charge", "reserve"]
    assert channel.kinds() == ["record_step"] * 3 + ["complete_run"]
    assert channel.step_keys() == ["validate", "charge", "reserve"]
    recorded = channel.recorded()
    assert recorded["validate"].result.json == "null"
    assert recorded["charge"].result.json == "30"
    assert recorded["charge"].attempt == 1
    assert (
        recorded["charge"].end_time.ToNanoseconds() >= recorded["charge"].start_time.ToNanoseconds()
    )
    assert final.complete_run.result.json == '{"order_id":1,"total":30}'
    assert all(c.run_id == "run-1" and c.lease_id == 7 for c in channel.commands)


async def test_journaled_steps_are_not_run_again(channel: FakeChannel) -> None:
    journal = {"validate": None, "charge": 99}
    outcome, final = await run(process, channel, input={"id": 2, "amount": 30}, journal=journal)
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["reserve"]
    assert channel.step_keys() == ["reserve"]
    assert final.complete_run.result.json == '{"order_id":2,"total":99}'  # the recorded 99


async def test_fully_journaled_run_only_completes(channel: FakeChannel) -> None:
    journal = {"validate": None, "charge": 5, "reserve": "stock-3"}
    await run(process, channel, input={"id": 3, "amount": 1}, journal=journal)
    assert calls == []
    assert channel.kinds() == ["complete_run"]


@workflow
async def fan_out(ctx: WorkflowContext, words: list[str]) -> list[str]:
    # Later calls finish first: keys still follow call order.
    delays = [0.03 - 0.01 * i for i in range(len(words))]
    first = await asyncio.gather(*(send(w, d) for w, d in zip(words, delays, strict=True)))
    last = await send("done")
    return [*first, last]


async def test_gather_keys_follow_call_order(channel: FakeChannel) -> None:
    outcome, final = await run(fan_out, channel, input=["a", "b", "c"])
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["send:c", "send:b", "send:a", "send:done"]  # completion order
    recorded = channel.recorded()
    assert channel.step_keys() == ["send#3", "send#2", "send", "send#4"]
    assert [recorded[k].result.json for k in ("send", "send#2", "send#3", "send#4")] == [
        '"A"',
        '"B"',
        '"C"',
        '"DONE"',
    ]
    assert final.complete_run.result.json == '["A","B","C","DONE"]'


async def test_gather_replay_runs_only_missing_keys(channel: FakeChannel) -> None:
    journal = {"send#2": "recorded-b"}
    outcome, final = await run(fan_out, channel, input=["a", "b", "c"], journal=journal)
    assert outcome is RunOutcome.COMPLETED
    assert sorted(calls) == ["send:a", "send:c", "send:done"]
    assert sorted(channel.step_keys()) == ["send", "send#3", "send#4"]
    assert final.complete_run.result.json == '["A","recorded-b","C","DONE"]'


@workflow
async def with_compensation(ctx: WorkflowContext, order: Order) -> str:
    try:
        await decline(order)
    except CardDeclined as exc:
        await refund(order)
        return f"compensated: {exc}"
    return "charged"


async def test_live_step_error_is_recorded_then_raised(channel: FakeChannel) -> None:
    outcome, final = await run(with_compensation, channel, input={"id": 4, "amount": 1})
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["decline", "refund"]
    error = channel.recorded()["decline"].error
    assert error.type == f"{__name__}.CardDeclined"
    assert error.message == "card declined for 4"
    assert "Traceback" in error.traceback and "CardDeclined" in error.traceback
    assert (error.step_key, error.attempt) == ("decline", 1)
    assert final.complete_run.result.json == '"compensated: card declined for 4"'


async def test_recorded_error_is_rebuilt_on_replay(channel: FakeChannel) -> None:
    journal = {"decline": CardDeclined("card declined for 5")}
    outcome, final = await run(
        with_compensation, channel, input={"id": 5, "amount": 1}, journal=journal
    )
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["refund"]
    assert final.complete_run.result.json == '"compensated: card declined for 5"'


@workflow
async def catches_anything(ctx: WorkflowContext) -> str:
    try:
        await decline(Order(1, 1))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def test_unrebuildable_error_raises_step_failed(channel: FakeChannel) -> None:
    record = types_pb2.StepRecord(
        step_key="decline",
        error=types_pb2.ErrorInfo(type="gone.module.Vanished", message="poof"),
        attempt=1,
    )
    _, final = await run(catches_anything, channel, journal={"decline": record})
    assert final.complete_run.result.json == '"StepFailedError: gone.module.Vanished: poof"'
    assert StepFailedError.__name__ == "StepFailedError"


@workflow
async def fails(ctx: WorkflowContext, order: Order) -> None:
    await validate(order)
    await decline(order)


async def test_unhandled_step_error_fails_the_run(channel: FakeChannel) -> None:
    outcome, final = await run(fails, channel, input={"id": 6, "amount": 1})
    assert outcome is RunOutcome.FAILED
    assert channel.kinds() == ["record_step", "record_step", "fail_run"]
    error = final.fail_run.error
    assert error.type == f"{__name__}.CardDeclined"
    assert error.message == "card declined for 6"
    assert (error.step_key, error.attempt) == ("decline", 1)
    assert "Traceback" in error.traceback


async def test_replayed_unhandled_error_fails_with_the_same_type(channel: FakeChannel) -> None:
    journal = {"validate": None, "decline": CardDeclined("card declined for 7")}
    outcome, final = await run(fails, channel, input={"id": 7, "amount": 1}, journal=journal)
    assert outcome is RunOutcome.FAILED
    assert calls == []
    assert final.fail_run.error.type == f"{__name__}.CardDeclined"
    assert final.fail_run.error.step_key == "decline"


@workflow
async def raises_directly(ctx: WorkflowContext) -> None:
    raise LookupError("nothing here")


async def test_workflow_error_has_no_step_key(channel: FakeChannel) -> None:
    outcome, final = await run(raises_directly, channel)
    assert outcome is RunOutcome.FAILED
    assert final.fail_run.error.type == "builtins.LookupError"
    assert final.fail_run.error.step_key == ""


async def test_duplicate_uses_the_stored_outcome() -> None:
    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        if command.HasField("record_step") and command.record_step.step.step_key == "charge":
            return worker_service_pb2.CommandResult(
                status=worker_service_pb2.COMMAND_STATUS_DUPLICATE,
                recorded_step=result_record("charge", 1234),
            )
        return ok()

    channel = FakeChannel(respond)
    outcome, final = await run(process, channel, input={"id": 8, "amount": 30})
    assert outcome is RunOutcome.COMPLETED
    assert final.complete_run.result.json == '{"order_id":8,"total":1234}'


async def test_duplicate_error_outcome_is_raised() -> None:
    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        if command.HasField("record_step") and command.record_step.step.step_key == "charge":
            return worker_service_pb2.CommandResult(
                status=worker_service_pb2.COMMAND_STATUS_DUPLICATE,
                recorded_step=error_record("charge", CardDeclined("first writer lost")),
            )
        return ok()

    channel = FakeChannel(respond)
    outcome, final = await run(process, channel, input={"id": 9, "amount": 30})
    assert outcome is RunOutcome.FAILED
    assert final.fail_run.error.type == f"{__name__}.CardDeclined"
    assert final.fail_run.error.message == "first writer lost"


@workflow
async def swallows(ctx: WorkflowContext) -> str:
    try:
        await send("one")
    except Exception:
        return "swallowed"
    await send("two")
    return "finished"


async def test_lease_lost_abandons_silently_and_cannot_be_swallowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = FakeChannel(
        lambda _: worker_service_pb2.CommandResult(
            status=worker_service_pb2.COMMAND_STATUS_LEASE_LOST, message="re-queued"
        )
    )
    executor = RunExecutor(swallows, make_task("swallows"), channel)
    with caplog.at_level(logging.DEBUG, logger="stepd.worker"):
        assert await executor.execute() is RunOutcome.ABANDONED
    assert channel.kinds() == ["record_step"]  # nothing after the lost lease
    assert calls == ["send:one"]
    assert executor.abandoned
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "status",
    [worker_service_pb2.COMMAND_STATUS_INVALID, worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR],
)
async def test_rejected_command_abandons_and_logs(
    status: worker_service_pb2.CommandStatus.ValueType, caplog: pytest.LogCaptureFixture
) -> None:
    channel = FakeChannel(
        lambda _: worker_service_pb2.CommandResult(status=status, message="payload too large")
    )
    executor = RunExecutor(swallows, make_task("swallows"), channel)
    assert await executor.execute() is RunOutcome.ABANDONED
    assert channel.kinds() == ["record_step"]
    assert "payload too large" in caplog.text
    assert "record_step" in caplog.text


async def test_abandoned_run_sends_nothing(channel: FakeChannel) -> None:
    executor = RunExecutor(process, make_task("process", input={"id": 1, "amount": 1}), channel)
    executor.abandon()
    assert await executor.execute() is RunOutcome.ABANDONED
    assert channel.commands == []
    assert calls == []


async def test_commands_wait_for_their_results() -> None:
    channel = FakeChannel(lambda _: None)  # answer nothing until told
    task = asyncio.create_task(
        RunExecutor(process, make_task("process", input={"id": 1, "amount": 2}), channel).execute()
    )
    await asyncio.sleep(0.01)
    assert channel.step_keys() == ["validate"]  # blocked until validate is acknowledged
    channel.resolve(1, ok())
    await asyncio.sleep(0.01)
    assert sorted(channel.step_keys()) == ["charge", "reserve", "validate"]  # gather: both sent
    channel.resolve(2, ok())
    channel.resolve(3, ok())
    await asyncio.sleep(0.01)
    assert channel.kinds()[-1] == "complete_run"
    channel.resolve(4, ok())
    assert await task is RunOutcome.COMPLETED


@workflow
async def renamed(ctx: WorkflowContext) -> None:
    await send("x")


async def test_unknown_journal_entries_are_non_deterministic(
    channel: FakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    executor = RunExecutor(renamed, make_task("renamed", journal={"old_step": 1}), channel)
    assert await executor.execute() is RunOutcome.NON_DETERMINISTIC
    # The new step never runs over a journal it cannot have produced: nothing is sent.
    assert channel.kinds() == []
    assert executor.non_determinism is not None
    assert "old_step" in str(executor.non_determinism)
    assert "calls send" in str(executor.non_determinism)
    assert "old_step" in caplog.text


@workflow
async def typed_io(ctx: WorkflowContext, order: Order | None = None) -> dict[str, Any]:
    return {"order": order, "ctx": [ctx.run_id, ctx.workflow_name, ctx.version]}


async def test_input_is_validated_into_its_type(channel: FakeChannel) -> None:
    _, final = await run(typed_io, channel, input={"id": 1, "amount": 2})
    assert final.complete_run.result.json == (
        '{"order":{"id":1,"amount":2},"ctx":["run-1","typed_io","1"]}'
    )


@pytest.mark.parametrize("input_json", ["", "null"])
async def test_missing_input_uses_the_default(channel: FakeChannel, input_json: str) -> None:
    _, final = await run(typed_io, channel, input_json=input_json)
    assert final.complete_run.result.json.startswith('{"order":null')


async def test_bad_input_fails_the_run(channel: FakeChannel) -> None:
    outcome, final = await run(process, channel, input={"id": "x"})
    assert outcome is RunOutcome.FAILED
    assert final.fail_run.error.type == "stepd.errors.PayloadError"
    assert calls == []


@step
async def make_receipt() -> Receipt:
    return {"order_id": 1, "total": 2}  # type: ignore[return-value]


@step
async def unserializable() -> object:
    return object()


@workflow
async def round_trips(ctx: WorkflowContext) -> str:
    receipt = await make_receipt()
    assert isinstance(receipt, Receipt)  # live results come back validated, as on replay
    try:
        await unserializable()
    except PayloadError as exc:
        return f"payload error: {exc}"
    return "no error"


async def test_live_results_round_trip(channel: FakeChannel) -> None:
    outcome, final = await run(round_trips, channel)
    assert outcome is RunOutcome.COMPLETED
    assert final.complete_run.result.json.startswith('"payload error: cannot serialize')
    assert channel.recorded()["unserializable"].error.type == "stepd.errors.PayloadError"


@step
def blocking(x: int) -> tuple[int, bool]:
    return x * 2, threading.current_thread() is threading.main_thread()


@step
async def outer_step() -> int:
    return await inner_step() + 1  # a step called inside a step is a plain call


@step
async def inner_step() -> int:
    calls.append("inner")
    return 1


@workflow
async def mixed(ctx: WorkflowContext) -> list[Any]:
    doubled, on_main = await blocking(21)

    async def lookup(key: str, *, default: int) -> int:
        return default

    looked = await ctx.step(lookup)("k", default=5)

    @ctx.step(name="announce")
    async def notify() -> str:
        return "sent"

    return [doubled, on_main, looked, await notify(), await outer_step(), await notify()]


async def test_sync_steps_context_steps_and_nested_calls(channel: FakeChannel) -> None:
    outcome, final = await run(mixed, channel)
    assert outcome is RunOutcome.COMPLETED
    assert final.complete_run.result.json == '[42,false,5,"sent",2,"sent"]'
    assert channel.step_keys() == ["blocking", "lookup", "announce", "outer_step", "announce#2"]
    assert calls == ["inner"]


async def test_steps_run_plainly_after_an_execution(channel: FakeChannel) -> None:
    await run(process, channel, input={"id": 1, "amount": 1})
    before = len(channel.commands)
    assert await charge(Order(1, 77)) == 77
    assert len(channel.commands) == before


async def test_cancellation_propagates(channel: FakeChannel) -> None:
    @workflow
    async def slow(ctx: WorkflowContext) -> None:
        await send("wait", 10)

    task = asyncio.create_task(RunExecutor(slow, make_task("slow"), channel).execute())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert channel.commands == []


@step
async def stray_cancel() -> None:
    raise asyncio.CancelledError("not a real cancellation")


@workflow
async def stray(ctx: WorkflowContext) -> None:
    await stray_cancel()


async def test_a_stray_cancelled_error_fails_the_run(channel: FakeChannel) -> None:
    outcome, final = await run(stray, channel)
    assert outcome is RunOutcome.FAILED
    assert final.fail_run.error.type == "builtins.RuntimeError"
    assert "CancelledError escaped the workflow" in final.fail_run.error.message


# -- the run's lifetime: abandon, drain, release --------------------------------------

RELEASE = "worker shutting down"


class Gates:
    """Step bodies that wait for a gate and log what happens to them."""

    def __init__(self) -> None:
        self.open: dict[str, asyncio.Event] = {}
        self.log: list[str] = []

    def gate(self, label: str) -> asyncio.Event:
        return self.open.setdefault(label, asyncio.Event())

    async def until(self, entry: str) -> None:
        async with asyncio.timeout(5):
            while entry not in self.log:  # noqa: ASYNC110 - polling the log
                await asyncio.sleep(0.001)


gates = Gates()


@pytest.fixture(autouse=True)
def _reset_gates() -> None:
    gates.open.clear()
    gates.log.clear()


@step
async def gated(label: str) -> str:
    gates.log.append(f"{label}:start")
    try:
        await gates.gate(label).wait()
    except asyncio.CancelledError:
        gates.log.append(f"{label}:cancelled")
        raise
    gates.log.append(f"{label}:end")
    return label


@step
async def stubborn(label: str) -> str:
    """Swallows one cancellation and returns a value anyway."""
    gates.log.append(f"{label}:start")
    try:
        await gates.gate(label).wait()
    except asyncio.CancelledError:
        gates.log.append(f"{label}:cancelled")
        async with asyncio.timeout(5):
            await gates.gate(label).wait()
    gates.log.append(f"{label}:end")
    return label


thread_gate = threading.Event()


@step
def gated_in_thread(label: str) -> str:
    gates.log.append(f"{label}:start")
    thread_gate.wait(5)
    gates.log.append(f"{label}:end")
    return label


@workflow
async def two_in_a_row(ctx: WorkflowContext) -> list[str]:
    return [await gated("first"), await gated("second")]


@workflow
async def fan(ctx: WorkflowContext) -> list[str]:
    async def chain() -> str:
        await gated("a1")
        return await gated("a2")

    return list(await asyncio.gather(chain(), gated("b")))


@workflow
async def fan_with_thread(ctx: WorkflowContext) -> list[str]:
    return list(await asyncio.gather(gated("a"), stubborn("s"), gated_in_thread("t")))


def started(executor: RunExecutor) -> asyncio.Task[RunOutcome]:
    return asyncio.create_task(executor.execute())


async def test_drain_records_the_step_in_flight_then_releases_at_the_next_one(
    channel: FakeChannel,
) -> None:
    executor = RunExecutor(two_in_a_row, make_task("two_in_a_row"), channel)
    task = started(executor)
    await gates.until("first:start")
    executor.drain()
    await asyncio.sleep(0.01)
    assert channel.commands == []  # the step in flight goes on
    gates.gate("first").set()
    assert await asyncio.wait_for(task, 5) is RunOutcome.RELEASED
    assert channel.kinds() == ["record_step", "release_run"]
    assert channel.step_keys() == ["gated"]
    assert channel.final().release_run.reason == RELEASE
    assert "second:start" not in gates.log  # never started
    assert executor.released and executor.abandoned


async def test_drain_in_gather_waits_for_every_step_in_flight(channel: FakeChannel) -> None:
    executor = RunExecutor(fan, make_task("fan"), channel)
    task = started(executor)
    await gates.until("b:start")
    await gates.until("a1:start")
    executor.drain()
    gates.gate("a1").set()
    await asyncio.sleep(0.02)
    # a1 is recorded; a2 is not started; b is still running, so no release yet.
    assert channel.kinds() == ["record_step"]
    assert "a2:start" not in gates.log
    gates.gate("b").set()
    with pytest.raises(asyncio.CancelledError):  # the release cancels the workflow
        await asyncio.wait_for(task, 5)
    assert channel.kinds() == ["record_step", "record_step", "release_run"]
    assert sorted(channel.step_keys()) == ["gated", "gated#2"]  # b, then a1 (call order)
    assert "a2:start" not in gates.log


async def test_a_run_that_finishes_after_drain_completes(channel: FakeChannel) -> None:
    journal = {"gated": "first"}
    executor = RunExecutor(two_in_a_row, make_task("two_in_a_row", journal=journal), channel)
    task = started(executor)
    await gates.until("second:start")
    executor.drain()
    gates.gate("second").set()
    assert await asyncio.wait_for(task, 5) is RunOutcome.COMPLETED
    assert channel.kinds() == ["record_step", "complete_run"]


async def test_drain_replays_journaled_steps(channel: FakeChannel) -> None:
    journal = {"gated": "first", "gated#2": "second"}
    executor = RunExecutor(two_in_a_row, make_task("two_in_a_row", journal=journal), channel)
    executor.drain()
    assert await asyncio.wait_for(started(executor), 5) is RunOutcome.COMPLETED
    assert channel.kinds() == ["complete_run"]


async def test_release_cancels_the_steps_in_flight_and_sends_only_release(
    channel: FakeChannel,
) -> None:
    executor = RunExecutor(fan, make_task("fan"), channel)
    task = started(executor)
    await gates.until("b:start")
    await gates.until("a1:start")
    assert executor.release() is True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert sorted(gates.log) == ["a1:cancelled", "a1:start", "b:cancelled", "b:start"]
    assert channel.kinds() == ["release_run"]
    assert executor.release() is False  # once only
    assert channel.kinds() == ["release_run"]


async def test_release_after_the_final_command_sends_nothing() -> None:
    channel = FakeChannel(lambda _: None)  # complete_run stays unanswered
    journal = {"gated": "first", "gated#2": "second"}
    executor = RunExecutor(two_in_a_row, make_task("two_in_a_row", journal=journal), channel)
    task = started(executor)
    await asyncio.sleep(0.01)
    assert channel.kinds() == ["complete_run"]
    assert executor.release() is False
    channel.resolve(1, ok())
    assert await asyncio.wait_for(task, 5) is RunOutcome.COMPLETED
    assert channel.kinds() == ["complete_run"]


async def test_abandon_cancels_every_step_of_a_gather_and_drops_late_results(
    channel: FakeChannel,
) -> None:
    thread_gate.clear()
    executor = RunExecutor(fan_with_thread, make_task("fan_with_thread"), channel)
    task = started(executor)
    for label in ("a", "s", "t"):
        await gates.until(f"{label}:start")
    executor.abandon()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert "a:cancelled" in gates.log and "s:cancelled" in gates.log
    # The stubborn step and the thread both finish later: neither is recorded.
    gates.gate("s").set()
    thread_gate.set()
    await gates.until("s:end")
    await gates.until("t:end")
    await asyncio.sleep(0.02)
    assert channel.commands == []


async def test_lease_lost_in_one_branch_cancels_the_others() -> None:
    thread_gate.clear()

    def respond(command: worker_service_pb2.WorkerCommand) -> worker_service_pb2.CommandResult:
        return worker_service_pb2.CommandResult(
            status=worker_service_pb2.COMMAND_STATUS_LEASE_LOST, message="re-queued"
        )

    channel = FakeChannel(respond)
    executor = RunExecutor(fan_with_thread, make_task("fan_with_thread"), channel)
    task = started(executor)
    for label in ("a", "s", "t"):
        await gates.until(f"{label}:start")
    gates.gate("a").set()  # a is recorded: LEASE_LOST
    try:
        outcome: RunOutcome | None = await asyncio.wait_for(task, 5)
    except asyncio.CancelledError:
        outcome = None  # the workflow was cancelled rather than unwound: both are fine
    assert outcome in (RunOutcome.ABANDONED, None)
    assert executor.abandoned
    assert "s:cancelled" in gates.log
    gates.gate("s").set()
    thread_gate.set()
    await gates.until("s:end")
    await gates.until("t:end")
    await asyncio.sleep(0.02)
    assert channel.step_keys() == ["gated"]  # a; nothing after the lost lease


async def test_drain_releases_a_held_non_deterministic_run(channel: FakeChannel) -> None:
    executor = RunExecutor(renamed, make_task("renamed", journal={"old_step": 1}), channel)
    assert await asyncio.wait_for(started(executor), 5) is RunOutcome.NON_DETERMINISTIC
    executor.drain()
    assert channel.kinds() == ["release_run"]


async def test_drain_during_a_non_deterministic_run_releases_it(channel: FakeChannel) -> None:
    executor = RunExecutor(renamed, make_task("renamed", journal={"old_step": 1}), channel)
    executor.drain()
    assert await asyncio.wait_for(started(executor), 5) is RunOutcome.RELEASED
    # send("x") was called after the drain: it is not run, and the run is given back.
    assert channel.kinds() == ["release_run"]
    assert calls == []


@workflow
async def shielded(ctx: WorkflowContext) -> str:
    return await asyncio.shield(gated("x"))  # the step runs in a task of its own


async def test_abandon_cancels_steps_out_of_the_workflows_reach(channel: FakeChannel) -> None:
    executor = RunExecutor(shielded, make_task("shielded"), channel)
    task = started(executor)
    await gates.until("x:start")
    executor.abandon()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await gates.until("x:cancelled")
    assert channel.commands == []


async def test_a_run_released_before_it_started_runs_nothing(channel: FakeChannel) -> None:
    executor = RunExecutor(two_in_a_row, make_task("two_in_a_row"), channel)
    executor.drain()
    assert executor.release() is True
    assert await asyncio.wait_for(started(executor), 5) is RunOutcome.RELEASED
    assert channel.kinds() == ["release_run"]
    assert gates.log == []
