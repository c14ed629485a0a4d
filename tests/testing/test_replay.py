"""stepd.testing.replay: histories exported from a real server (a ``stepd serve`` and a
``stepd-worker`` process), saved as files, replayed against changed code."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from stepd import Client, WorkflowContext, step, workflow
from stepd.errors import NonDeterminismError
from stepd.testing import RunHistory, replay
from tests.e2e.harness import Server, Stack
from tests.testing import replay_workflows
from tests.testing.replay_workflows import charge, reserve

pytestmark = pytest.mark.slow


@step
async def check_stock(order: int) -> bool:
    return True


@step
async def notify(order: int) -> None:
    return None


@workflow(name="replayed_order")
async def checks_stock_first(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    """A step added before the first recorded one: breaks every run."""
    await check_stock(n)
    return await replay_workflows.order.fn(ctx, n)


@workflow(name="replayed_order")
async def notifies_at_the_end(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    """A step added after the last one: runs in flight take it, finished ones never did."""
    result = await replay_workflows.order.fn(ctx, n)
    await notify(n)
    return result


@workflow(name="replayed_order")
async def no_recorded_day(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    """ctx.now() removed: the journal holds a value the code never takes."""
    reserved = await reserve(n)
    ctx.log("reserved", order=n)
    approval = await ctx.wait_for_signal("approve", timeout=3600)
    charged = await charge(n, approval["by"])
    return {"reserved": reserved, "charged": charged}


@workflow(name="replayed_order")
async def reworded(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    """The same steps and waits, another result: replays fine."""
    result = await replay_workflows.order.fn(ctx, n)
    return {**result, "note": "reworded"}


async def _exported(stack: Stack, server: Server, tmp_path: Path) -> tuple[Path, Path]:
    """One finished and one waiting run of replayed_order, exported to files."""
    stack.start_worker(server, ["tests.testing.replay_workflows"])
    async with Client(server.address) as client:
        done = await client.trigger(replay_workflows.order, 1)
        waiting = await client.trigger(replay_workflows.order, 2)
        for handle in (done, waiting):
            await eventually_suspended(client, handle.run_id)
        await done.signal("approve", {"by": "ada"})
        assert (await done.result())["charged"] == "charged-1-by-ada"
        paths = tmp_path / "done.json", tmp_path / "waiting.json"
        for handle, path in zip((done, waiting), paths, strict=True):
            (await RunHistory.fetch(client, handle.run_id)).save(path)
    return paths


async def eventually_suspended(client: Client, run_id: str) -> None:
    for _ in range(400):
        if (await client.get_run(run_id)).status == "suspended":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never suspended")


async def test_replay_flags_changed_code_and_passes_unchanged_code(
    stack: Stack, server: Server, tmp_path: Path
) -> None:
    done_file, waiting_file = await _exported(stack, server, tmp_path)

    # The file format: what docs/testing.md describes.
    document = json.loads(done_file.read_text())
    assert document["format"] == "stepd-history/1"
    assert document["run"]["status"] == "completed" and document["run"]["input"] == 1
    events = document["events"]
    assert any(e["type"] == "step_failed" and e.get("attempt_only") for e in events)
    assert {"type": "wait_met", "key": "signal:1", "payload": {"by": "ada"}}.items() <= next(
        e for e in events if e["type"] == "wait_met" and e["key"] == "signal:1"
    ).items()

    done, waiting = RunHistory.load(done_file), RunHistory.load(waiting_file)

    assert done.ended_by_its_code and not waiting.ended_by_its_code

    # The code that recorded them replays both.
    unchanged_done = await replay(done, replay_workflows.order)
    unchanged_waiting = await replay(waiting, replay_workflows.order)
    assert unchanged_done.ok and unchanged_done.next.startswith("completes with")
    assert unchanged_waiting.ok and unchanged_waiting.next.startswith("waits on signal:1")
    assert (await replay(done, reworded)).ok and (await replay(waiting, reworded)).ok

    # A step inserted before the recorded ones breaks both.
    for history in (done, waiting):
        result = await replay(history, checks_stock_first)
        assert not result.ok
        assert isinstance(result.error, NonDeterminismError)
        assert "reserve" in str(result.error) and "check_stock" in str(result.error)
        with pytest.raises(NonDeterminismError):
            result.check()

    # A step added at the end: the finished run never called it; the waiting run will.
    added_done = await replay(done, notifies_at_the_end)
    assert not added_done.ok and "calls step notify" in str(added_done.error)
    assert (await replay(waiting, notifies_at_the_end)).ok

    # A recorded value the code no longer takes.
    for history in (done, waiting):
        assert "now:1" in str((await replay(history, no_recorded_day)).error)


async def test_a_history_of_another_workflow_or_a_bad_file_is_refused(tmp_path: Path) -> None:
    history = RunHistory.from_json(
        json.dumps(
            {
                "format": "stepd-history/1",
                "run": {
                    "run_id": "r1",
                    "workflow_name": "elsewhere",
                    "workflow_version": "1",
                    "status": "running",
                    "input": None,
                },
                "events": [{"sequence": 1, "type": "a_type_from_the_future"}],
            }
        )
    )
    assert history.events[0].type == "unknown"
    with pytest.raises(ValueError, match="elsewhere"):
        await replay(history, replay_workflows.order)
    for text, message in (
        ("not json", "must be JSON"),
        ('{"format": "other/1"}', "not a stepd history file"),
        ('{"format": "stepd-history/1", "run": []}', "run must be a JSON object"),
    ):
        with pytest.raises(ValueError, match=message):
            RunHistory.from_json(text)
