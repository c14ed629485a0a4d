"""A run that goes on from a step's outcome before its answer, on a server that
applies each run's commands in order (``StreamSettings.ordered_commands``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from stepd import WorkflowContext, step, workflow
from stepd._definitions import Workflow
from stepd._phase import RunOutcome
from stepd._replay import RunExecutor
from stepd.v1 import worker_service_pb2

from .conftest import FakeChannel, make_task, ok, result_record

calls: list[str] = []

DUPLICATE = worker_service_pb2.COMMAND_STATUS_DUPLICATE
LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


class Refused(Exception):
    pass


@step
async def note(label: str) -> str:
    calls.append(label)
    return label.upper()


@step
async def refuse(label: str) -> str:
    calls.append(label)
    raise Refused(label)


@workflow(name="going_on.two_steps")
async def two_steps(ctx: WorkflowContext) -> str:
    first = await note("a")
    second = await note("b")
    return first + second


@workflow(name="going_on.failing")
async def failing(ctx: WorkflowContext) -> str:
    return await refuse("x")


def holding_records(
    command: worker_service_pb2.WorkerCommand,
) -> worker_service_pb2.CommandResult | None:
    """Leave step records unanswered (the test answers them); answer the rest OK."""
    return None if command.HasField("record_step") else ok()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling what the fake channel saw
            await asyncio.sleep(0.005)


def start(wf: Workflow[Any, Any], channel: FakeChannel) -> asyncio.Task[RunOutcome]:
    executor = RunExecutor(wf, make_task(wf.name, wf.version), channel)
    return asyncio.create_task(executor.execute())


async def test_the_end_goes_right_behind_the_last_outcome_but_no_step_before_an_answer() -> None:
    channel = FakeChannel(holding_records, ordered=True)
    execution = start(two_steps, channel)
    await until(lambda: channel.kinds() == ["record_step"])
    await asyncio.sleep(0.05)
    assert calls == ["a"]  # b's body waits for a's answer
    channel.resolve(1, ok())
    await until(lambda: channel.kinds() == ["record_step", "record_step", "complete_run"])
    end = channel.final()
    assert end.complete_run.if_steps_recorded  # sent before b's answer: guarded
    assert end.complete_run.result.json == '"AB"'
    channel.resolve(2, ok())
    assert await asyncio.wait_for(execution, 5) is RunOutcome.COMPLETED


async def test_an_older_server_gets_the_end_only_after_every_answer() -> None:
    channel = FakeChannel(holding_records, ordered=False)
    execution = start(two_steps, channel)
    await until(lambda: channel.kinds() == ["record_step"])
    channel.resolve(1, ok())
    await until(lambda: channel.kinds() == ["record_step", "record_step"])
    await asyncio.sleep(0.05)
    assert channel.kinds() == ["record_step", "record_step"]  # no end before b's answer
    channel.resolve(2, ok())
    assert await asyncio.wait_for(execution, 5) is RunOutcome.COMPLETED
    assert not channel.final().complete_run.if_steps_recorded


async def test_a_failed_step_s_outcome_is_followed_by_a_guarded_fail_run() -> None:
    channel = FakeChannel(holding_records, ordered=True)
    execution = start(failing, channel)
    await until(lambda: channel.kinds() == ["record_step", "fail_run"])
    end = channel.final()
    assert end.fail_run.if_steps_recorded
    assert end.fail_run.error.type.endswith("Refused")
    channel.resolve(1, ok())
    assert await asyncio.wait_for(execution, 5) is RunOutcome.FAILED


async def test_a_duplicate_outcome_releases_the_run_before_its_next_step() -> None:
    channel = FakeChannel(holding_records, ordered=True)
    execution = start(two_steps, channel)
    await until(lambda: channel.kinds() == ["record_step"])
    # Another outcome of "a" was stored first: the run went on from its own one.
    channel.resolve(
        1, worker_service_pb2.CommandResult(status=DUPLICATE, recorded_step=result_record("a", "Z"))
    )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(execution, 5)
    assert channel.kinds() == ["record_step", "release_run"]
    assert calls == ["a"]  # b never ran


async def test_a_duplicate_outcome_behind_the_end_leaves_the_end_to_the_server() -> None:
    channel = FakeChannel(lambda _: None, ordered=True)  # every answer held
    execution = start(failing, channel)
    await until(lambda: channel.kinds() == ["record_step", "fail_run"])
    channel.resolve(1, worker_service_pb2.CommandResult(status=DUPLICATE))
    await asyncio.sleep(0.02)
    # The server refuses the guarded end and releases the run itself.
    channel.resolve(2, worker_service_pb2.CommandResult(status=LEASE_LOST, message="released"))
    assert await asyncio.wait_for(execution, 5) is RunOutcome.ABANDONED
    assert channel.kinds() == ["record_step", "fail_run"]  # no release of its own


@workflow(name="going_on.pair")
async def pair(ctx: WorkflowContext) -> str:
    first, second = await asyncio.gather(note("a"), note("b"))
    return first + second


async def test_steps_side_by_side_wait_for_their_answers_and_not_for_each_other() -> None:
    channel = FakeChannel(holding_records, ordered=True)
    execution = start(pair, channel)
    await until(lambda: channel.kinds() == ["record_step", "record_step"])
    assert sorted(calls) == ["a", "b"]  # neither body waited for the other's answer
    await asyncio.sleep(0.05)
    assert channel.kinds() == ["record_step", "record_step"]  # nothing went on yet
    channel.resolve(1, ok())
    channel.resolve(2, ok())
    assert await asyncio.wait_for(execution, 5) is RunOutcome.COMPLETED
    assert not channel.final().complete_run.if_steps_recorded
