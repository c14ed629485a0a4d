"""Sticky execution with a real server and real worker processes: a woken run
continues on the worker that keeps it live, with no replay; every miss (worker
killed, cache evicted) falls back to a full replay, and nothing runs twice."""

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

from stepd import Client, RunStatus
from stepd.history import RunEventType
from tests.e2e import sticky_workflows as sw
from tests.e2e.harness import Server, Stack, eventually, read_marks

MODULES = ["tests.e2e.sticky_workflows"]
RESULT_TIMEOUT = 60


async def dispatches(client: Client, run_id: str) -> list[bool]:
    """Whether each dispatch of the run was a continuation, in order."""
    return [
        (event.detail or "").endswith("(continuation)")
        async for event in client.list_run_events(run_id, page_size=1000)
        if event.type is RunEventType.DISPATCHED
    ]


async def wait_for_status(client: Client, run_id: str, status: RunStatus) -> None:
    deadline = time.monotonic() + RESULT_TIMEOUT
    while (info := await client.get_run(run_id)).status is not status:
        assert time.monotonic() < deadline, f"run {run_id} never {status}: {info}"
        await asyncio.sleep(0.02)


def steps(marks: Path, tag: str) -> list[str]:
    return [line for line in read_marks(marks, tag) if line.startswith("step")]


def has_steps(marks: Path, tag: str, count: int) -> Callable[[], bool]:
    """A check that ``tag`` ran steps 1 to ``count``, once each."""
    return lambda: steps(marks, tag) == [f"step {v}" for v in range(1, count + 1)]


async def test_a_loop_of_steps_and_sleeps_continues_without_replay(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    stack.start_worker(server, MODULES)
    count = 20
    handle = await client.trigger(sw.loop, sw.Loop(tag=tag, count=count))
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == sum(range(count))
    assert steps(marks, tag) == [f"step {i}" for i in range(count)]
    # The first dispatch is full; every wake-up after a sleep is a continuation.
    assert await dispatches(client, handle.run_id) == [False] + [True] * count


async def test_a_killed_worker_s_run_is_replayed_in_full_elsewhere(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    first = stack.start_worker(server, MODULES)
    count, pause = 12, 6
    handle = await client.trigger(sw.loop, sw.Loop(tag=tag, count=count, pause_at=pause))
    await eventually(lambda: len(steps(marks, tag)) == pause, what=f"{pause} steps")
    # Woken after its last sleep, then suspended on the signal: every step is recorded.
    deadline = time.monotonic() + RESULT_TIMEOUT
    while len(await dispatches(client, handle.run_id)) < pause + 1:
        assert time.monotonic() < deadline, "the run was never woken after its last sleep"
        await asyncio.sleep(0.02)
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    first.signal(signal.SIGKILL)
    first.popen.wait(10)
    stack.start_worker(server, MODULES)
    await client.signal(handle.run_id, "resume")
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == sum(range(count))
    assert steps(marks, tag) == [f"step {i}" for i in range(count)]  # none ran twice
    kinds = await dispatches(client, handle.run_id)
    # Continuations up to the pause; the new worker replays in full, then continues.
    assert kinds == [False] + [True] * pause + [False] + [True] * (count - pause)


async def test_a_cache_of_one_evicts_and_both_runs_complete(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    stack.start_worker(server, MODULES, env={"STEPD_WORKER_MAX_CACHED_RUNS": "1"})
    a = await client.trigger(sw.signals, sw.Loop(tag=f"{tag}-a", count=3))
    await wait_for_status(client, a.run_id, RunStatus.SUSPENDED)
    b = await client.trigger(sw.signals, sw.Loop(tag=f"{tag}-b", count=3))
    await wait_for_status(client, b.run_id, RunStatus.SUSPENDED)  # a is evicted
    await client.signal(a.run_id, "next", 1)  # a: replayed in full; b evicted now
    await eventually(lambda: steps(marks, f"{tag}-a") == ["step 1"], what="a's first step")
    await wait_for_status(client, a.run_id, RunStatus.SUSPENDED)
    await client.signal(a.run_id, "next", 2)  # a is the one kept: a continuation
    await eventually(lambda: len(steps(marks, f"{tag}-a")) == 2, what="a's second step")
    await wait_for_status(client, a.run_id, RunStatus.SUSPENDED)
    for value in (1, 2, 3):
        await client.signal(b.run_id, "next", value)
        await eventually(has_steps(marks, f"{tag}-b", value), what=f"b's step {value}")
    await client.signal(a.run_id, "next", 3)
    assert await asyncio.wait_for(a.result(), RESULT_TIMEOUT) == [1, 2, 3]
    assert await asyncio.wait_for(b.result(), RESULT_TIMEOUT) == [1, 2, 3]
    assert steps(marks, f"{tag}-a") == ["step 1", "step 2", "step 3"]
    assert steps(marks, f"{tag}-b") == ["step 1", "step 2", "step 3"]
    # a: first, full (evicted by b), continuation, full (evicted by b's rounds).
    assert await dispatches(client, a.run_id) == [False, False, True, False]
    # b: first, full (evicted by a), then continuations (nothing else suspended).
    assert await dispatches(client, b.run_id) == [False, False, True, True]


async def test_cancelling_a_kept_run_lets_its_execution_go(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    stack.start_worker(server, MODULES)
    handle = await client.trigger(sw.loop, sw.Loop(tag=tag, count=2, seconds=60))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    assert "unwound" not in read_marks(marks, tag)
    await client.cancel(handle.run_id, reason="no longer needed")
    # The worker unwinds the parked coroutine (its finally block runs) at once.
    await eventually(lambda: "unwound" in read_marks(marks, tag), what="the run unwound")
    assert (await client.get_run(handle.run_id)).status is RunStatus.CANCELLED
    assert steps(marks, tag) == ["step 0"]


async def test_signal_waits_continue_without_replay(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    stack.start_worker(server, MODULES)
    handle = await client.trigger(sw.signals, sw.Loop(tag=tag, count=3))
    for value in (5, 6, 7):
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
        await client.signal(handle.run_id, "next", value)
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == [5, 6, 7]
    assert steps(marks, tag) == ["step 5", "step 6", "step 7"]
    assert await dispatches(client, handle.run_id) == [False, True, True, True]


async def test_child_waits_continue_without_replay(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    stack.start_worker(server, MODULES)
    count = 3
    handle = await client.trigger(sw.parent, sw.Loop(tag=tag, count=count))
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == [0, 3, 6]
    assert steps(marks, tag) == [f"step {i}" for i in range(count)]
    assert await dispatches(client, handle.run_id) == [False] + [True] * count
