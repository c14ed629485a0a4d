"""Child runs through a real server and real worker processes."""

import asyncio
import signal
from pathlib import Path

import pytest

from stepd import Client, RunFailedError, RunInfo, RunStatus
from stepd.history import RunEventType
from tests.e2e import child_workflows as cw
from tests.e2e.harness import Server, Stack, eventually, read_marks, release
from tests.e2e.workflows import Job

MODULES = ("tests.e2e.child_workflows",)
RESULT_TIMEOUT = 60


async def children_of(client: Client, run_id: str) -> list[RunInfo]:
    return [run async for run in client.list_runs(parent_run_id=run_id, payloads=True)]


async def test_a_child_result_reaches_its_parent(
    client: Client, stack: Stack, server: Server
) -> None:
    stack.start_worker(server, MODULES)
    handle = await client.trigger(cw.parent_one, 20)
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == 41

    (child,) = await children_of(client, handle.run_id)
    assert child.run_id == f"{handle.run_id}/child:1"
    assert child.parent_run_id == handle.run_id
    assert child.root_run_id == handle.run_id
    assert child.result == 40
    parent = await client.get_run(handle.run_id)
    assert parent.root_run_id == handle.run_id and parent.parent_run_id is None
    events = [e async for e in client.list_run_events(handle.run_id)]
    started = [e for e in events if e.type is RunEventType.CHILD_STARTED]
    assert [(e.key, e.detail) for e in started] == [("child:1", child.run_id)]
    assert any(e.type is RunEventType.WAIT_MET and e.key == "child:1" for e in events)


async def test_a_failed_child_is_caught_or_fails_the_parent(
    client: Client, stack: Stack, server: Server
) -> None:
    stack.start_worker(server, MODULES)
    caught = await client.trigger(cw.parent_catch, "recover")
    text = await asyncio.wait_for(caught.result(), RESULT_TIMEOUT)
    assert text == (f"failed builtins.ValueError: card declined ({caught.run_id}/child:1)")

    raised = await client.trigger(cw.parent_catch, "reraise")
    with pytest.raises(RunFailedError) as failure:
        await asyncio.wait_for(raised.result(), RESULT_TIMEOUT)
    info = failure.value.info
    assert info.error_type == "stepd.errors.ChildFailedError"
    assert "card declined" in (info.error_message or "")
    assert f"{raised.run_id}/child:1" in (info.error_message or "")


async def test_twenty_children_gathered_while_the_parent_holds_no_worker(
    client: Client, stack: Stack, server: Server
) -> None:
    # One slot: the parent must give it up while it waits, or no child could run.
    stack.start_worker(server, MODULES, concurrency=1)
    handle = await client.trigger(cw.fan_out, 20)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == [2 * i for i in range(20)]
    children = await children_of(client, handle.run_id)
    assert sorted(c.run_id for c in children) == sorted(
        f"{handle.run_id}/child:{i}" for i in range(1, 21)
    )
    assert {c.status for c in children} == {RunStatus.COMPLETED}


async def test_a_parent_killed_while_its_children_run_starts_none_twice(
    client: Client, stack: Stack, server: Server, marks: Path, tag: str
) -> None:
    first = stack.start_worker(server, MODULES)
    handle = await client.trigger(cw.crash_parent, Job(tag=tag, value=3))
    await eventually(lambda: read_marks(marks, tag) == ["block"], what="the blocking step")
    first.signal(signal.SIGKILL)
    first.popen.wait(10)
    stack.start_worker(server, MODULES)
    await eventually(lambda: read_marks(marks, tag) == ["block", "block"], what="the replay")
    release(marks, tag)
    children = await children_of(client, handle.run_id)
    assert len(children) == 3
    for child in children:
        await client.signal(child.run_id, "go")
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == 0 + 1 + 2
    assert len(await children_of(client, handle.run_id)) == 3


async def test_cancelling_a_parent_cancels_its_attached_children_only(
    client: Client, stack: Stack, server: Server
) -> None:
    stack.start_worker(server, MODULES)
    handle = await client.trigger(cw.cascade)
    attached_id, detached_id = f"{handle.run_id}/child:1", f"{handle.run_id}/child:2"
    grandchild_id = f"{attached_id}/child:1"

    async def suspended(run_id: str) -> bool:
        try:
            return (await client.get_run(run_id)).status is RunStatus.SUSPENDED
        except Exception:
            return False

    for run_id in (handle.run_id, attached_id, detached_id, grandchild_id):
        for _ in range(1000):
            if await suspended(run_id):
                break
            await asyncio.sleep(0.02)
        assert await suspended(run_id), run_id
    grandchild = await client.get_run(grandchild_id)
    assert grandchild.parent_run_id == attached_id and grandchild.root_run_id == handle.run_id

    await client.cancel(handle.run_id, reason="order withdrawn")
    for run_id in (attached_id, grandchild_id):
        for _ in range(1000):
            if (await client.get_run(run_id)).status is RunStatus.CANCELLED:
                break
            await asyncio.sleep(0.02)
        info = await client.get_run(run_id)
        assert info.status is RunStatus.CANCELLED, run_id
        assert "parent run" in (info.cancel_reason or "")
    detached = await client.get_run(detached_id)
    assert detached.status is RunStatus.SUSPENDED and detached.detached
    await client.signal(detached_id, "go")
    for _ in range(1000):
        if (await client.get_run(detached_id)).status is RunStatus.COMPLETED:
            break
        await asyncio.sleep(0.02)
    assert (await client.get_run(detached_id)).result == 5
