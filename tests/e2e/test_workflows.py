"""Workflow shapes through a real server and a real worker process."""

import asyncio
from pathlib import Path
from typing import Literal

import pytest

from stepd import Client, RunFailedError, RunStatus
from tests.e2e import workflows as wf
from tests.e2e.harness import ManagedProcess, read_marks

RESULT_TIMEOUT = 30


async def run(client: Client, workflow, arg):
    """Trigger a run and wait for its typed result."""
    handle = await client.trigger(workflow, arg)
    return handle.run_id, await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)


async def test_sequential_steps_run_once_each_in_order(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    run_id, result = await run(client, wf.sequential, wf.Job(tag=tag, value=5))

    assert result == "5 -> 6 -> 12"
    assert read_marks(marks, tag) == ["add_one", "double", "describe"]
    info = await client.get_run(run_id)
    assert info.status is RunStatus.COMPLETED
    assert info.workflow_name == "e2e.sequential"
    assert info.result == "5 -> 6 -> 12"
    assert info.start_time is not None and info.end_time is not None


async def test_gathered_steps_run_concurrently(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    # Each step waits until all four have started: a sequential executor fails.
    _, result = await run(client, wf.parallel, wf.FanOut(tag=tag, width=4))

    assert result == {"squares": [0, 1, 4, 9], "total": 14}
    lines = read_marks(marks, tag)
    assert sorted(lines) == ["start:0", "start:1", "start:2", "start:3", "total"]
    assert lines[-1] == "total"


@pytest.mark.parametrize(
    ("kind", "weight", "expected", "step"),
    [
        ("express", 3.0, "courier:3.0", "ship_express"),
        ("standard", 3.0, "post:3.0", "ship_standard"),
        ("standard", 0.2, "courier:0.2", "ship_express"),
        ("digital", 0.0, "download-link", "email_link"),
    ],
)
async def test_conditional_runs_only_the_chosen_branch(
    client: Client,
    worker: ManagedProcess,
    marks: Path,
    tag: str,
    kind: Literal["express", "standard", "digital"],
    weight: float,
    expected: str,
    step: str,
) -> None:
    delivery = wf.Delivery(tag=tag, kind=kind, weight_kg=weight)
    _, result = await run(client, wf.conditional, delivery)

    assert result == expected
    assert read_marks(marks, tag) == [step]


async def test_loops_record_a_step_per_iteration(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    _, result = await run(client, wf.loop, wf.Job(tag=tag, value=12))

    # sum(range(12)) = 66 -> 33 -> 16 -> 8
    assert result == {"sum": 66, "remaining": 8, "halvings": 3}
    assert read_marks(marks, tag) == [f"accumulate:{i}" for i in range(12)] + ["halve"] * 3


async def test_ctx_step_wraps_and_decorates_functions(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    run_id, result = await run(client, wf.ctx_steps, wf.Job(tag=tag, value=30))

    assert result == {"rate": 0.5, "converted": 15, "run_id": run_id}
    assert read_marks(marks, tag) == ["lookup_rate:EUR", "convert"]


async def test_compensation_after_a_failing_step_returns_an_outcome(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    _, result = await run(client, wf.compensate, wf.Purchase(tag=tag, decline=True))

    assert result == f"declined: card declined for {tag}"
    assert read_marks(marks, tag) == ["reserve", "charge", f"release:reservation-{tag}"]


async def test_compensation_then_reraise_fails_the_run_with_the_step_error(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.compensate, wf.Purchase(tag=tag, decline=True, reraise=True))
    with pytest.raises(RunFailedError):
        await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    info = await client.get_run(handle.run_id)
    assert info.status is RunStatus.FAILED
    assert info.error_type == "tests.e2e.workflows.PaymentDeclinedError"
    assert info.error_message == f"card declined for {tag}"
    assert read_marks(marks, tag) == ["reserve", "charge", f"release:reservation-{tag}"]


async def test_successful_path_does_not_compensate(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    _, result = await run(client, wf.compensate, wf.Purchase(tag=tag))

    assert result == f"shipped reservation-{tag}"
    assert read_marks(marks, tag) == ["reserve", "charge", "ship"]


async def test_workflow_error_fails_the_run(
    client: Client, worker: ManagedProcess, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.fail, wf.Job(tag=tag, value=1))
    with pytest.raises(RunFailedError) as raised:
        await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    assert f"boom {tag}" in str(raised.value)
    info = await client.get_run(handle.run_id)
    assert info.status is RunStatus.FAILED
    assert info.error_type == "builtins.ValueError"
    assert info.error_message == f"boom {tag}"
    assert "raise ValueError" in (info.error_traceback or "")


async def test_trigger_by_name_and_idempotency_key(
    client: Client, worker: ManagedProcess, tag: str
) -> None:
    first = await client.trigger("e2e.square", 7, idempotency_key=f"key-{tag}")
    second = await client.trigger("e2e.square", 7, idempotency_key=f"key-{tag}")
    custom = await client.trigger(wf.square_workflow, 8, run_id=f"custom-{tag}")

    assert second.run_id == first.run_id
    assert custom.run_id == f"custom-{tag}"
    assert await asyncio.wait_for(first.result(), RESULT_TIMEOUT) == 49
    assert await asyncio.wait_for(custom.result(), RESULT_TIMEOUT) == 64
    assert await client.execute(wf.square_workflow, 9) == 81


async def test_many_concurrent_runs_all_complete(client: Client, worker: ManagedProcess) -> None:
    handles = await asyncio.gather(*(client.trigger(wf.square_workflow, i) for i in range(50)))
    results = await asyncio.wait_for(
        asyncio.gather(*(handle.result() for handle in handles)), RESULT_TIMEOUT
    )
    assert results == [i * i for i in range(50)]
