"""Flow control besides concurrency per key, through a real server and real
worker processes on both backends: priorities (with one worker slot, higher
priority runs go first), rate limits on run starts and on steps, debounce,
what GetRun says about a waiting run, and restarts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stepd import Client
from stepd.errors import InvalidArgumentError
from tests.e2e.harness import ManagedProcess, Server, Stack, eventually, read_marks, release

MODULES = ("tests.e2e.flow_workflows",)
LATER = datetime.now(UTC) + timedelta(days=1)
RESULT_TIMEOUT = 60.0


def start_worker(stack: Stack, server: Server, **options: Any) -> ManagedProcess:
    """Start a worker and wait until the server stored what it declares (its hello)."""
    before = server.process.log_text().count(" connected (capacity ")
    process = stack.start_worker(server, MODULES, **options)
    deadline = time.monotonic() + 30
    while server.process.log_text().count(" connected (capacity ") <= before:
        assert time.monotonic() < deadline, "the worker never connected"
        time.sleep(0.02)
    return process


def labels_in_order(marks: Path, tag: str) -> list[str]:
    """The labels of the runs that started, in the order they started."""
    lines = [line.split(" ") for line in read_marks(marks, tag)]
    return [label for label, _, _ in sorted(lines, key=lambda parts: int(parts[2]))]


async def test_with_one_worker_slot_higher_priority_runs_go_first(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server, concurrency=1)
    async with Client(server.address) as client:
        # The only slot is taken; everything triggered now waits for it.
        blocker = await client.trigger("ordered", {"tag": "p", "label": "blocker", "block": True})
        await eventually(lambda: len(read_marks(marks, "p")) == 1, what="blocker started")
        handles = [
            await client.trigger("ordered", {"tag": "p", "label": "low1"}, priority=-5),
            await client.trigger("ordered", {"tag": "p", "label": "normal1"}),
            await client.trigger("ordered", {"tag": "p", "label": "high1"}, priority=10),
            await client.trigger("urgent", {"tag": "p", "label": "urgent1"}),  # its default: 5
            await client.trigger("ordered", {"tag": "p", "label": "low2"}, priority=-5),
            await client.trigger("ordered", {"tag": "p", "label": "normal2"}, priority=0),
            await client.trigger("ordered", {"tag": "p", "label": "high2"}, priority=10),
        ]
        assert (await client.get_run(handles[3].run_id)).priority == 5
        # A trigger's priority overrides the workflow's default, 0 included.
        zero = await client.trigger("urgent", {"tag": "z"}, priority=0, start_at=LATER)
        assert (await client.get_run(zero.run_id)).priority == 0
        release(marks, "p")
        await blocker.result(timeout=RESULT_TIMEOUT)
        for handle in handles:
            await handle.result(timeout=RESULT_TIMEOUT)
    # Runs of one priority go in the order they were triggered (they are runs
    # of one workflow here: queues of different workflows are served in turn).
    assert labels_in_order(marks, "p") == [
        "blocker",
        "high1",
        "high2",
        "urgent1",
        "normal1",
        "normal2",
        "low1",
        "low2",
    ]


async def test_a_priority_out_of_range_is_invalid(stack: Stack, server: Server) -> None:
    async with Client(server.address) as client:
        with pytest.raises(InvalidArgumentError, match="priority must be from -1000 to 1000"):
            await client.trigger("ordered", {"tag": "x"}, priority=1001)


def starts(marks: Path, tag: str) -> list[tuple[int, str, str]]:
    """(time ns, worker pid, run id) of each marked start, by time."""
    lines = [line.split(" ") for line in read_marks(marks, tag)]
    return sorted((int(at), pid, run_id) for pid, run_id, at in lines)


def most_in_any_window(times: list[int], window_ns: int) -> int:
    """The most of ``times`` (sorted) in any half-open span of ``window_ns``."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window_ns:
            first += 1
        most = max(most, last - first + 1)
    return most


async def test_a_step_rate_limit_holds_across_two_workers(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server, concurrency=40)
    start_worker(stack, server, concurrency=40)
    async with Client(server.address) as client:
        handles = [await client.trigger("rated_steps", "r") for _ in range(70)]
        pids = {await handle.result(timeout=RESULT_TIMEOUT) for handle in handles}
    assert len(pids) == 2, "both workers ran steps"
    times = [at for at, _, _ in starts(marks, "r")]
    assert len(times) == 70
    # 10 per second: over the first 5 seconds 50 (within 10%), and no 1-second
    # span holds more than 10 (within 10%).
    in_five = sum(1 for at in times if at - times[0] < 5_000_000_000)
    assert 45 <= in_five <= 55, in_five
    assert most_in_any_window(times, 1_000_000_000) <= 11
    # Turns are spread evenly, 100 ms apart: 70 of them take about 7 seconds.
    assert times[-1] - times[0] >= 6_500_000_000


async def test_a_start_rate_limit_delays_runs_of_its_key_only(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server, concurrency=50)
    async with Client(server.address) as client:
        key_a = [
            await client.trigger("rated_starts", {"tag": "s", "label": "a", "customer": "a"})
            for _ in range(12)
        ]
        key_b = [
            await client.trigger("rated_starts", {"tag": "s", "label": "b", "customer": "b"})
            for _ in range(3)
        ]
        info = await client.get_run(key_a[-1].run_id)
        assert info.waiting_reason.startswith("rate-limited by limit 'rated_starts' key 'a' until ")
        for handle in [*key_a, *key_b]:
            await handle.result(timeout=RESULT_TIMEOUT)
        assert (await client.get_run(key_a[-1].run_id)).waiting_reason == ""
    started = {"a": [], "b": []}  # type: dict[str, list[int]]
    for line in read_marks(marks, "s"):
        label, _, at = line.split(" ")
        started[label].append(int(at))
    a, b = sorted(started["a"]), sorted(started["b"])
    # Key "a": 12 runs at 5 per second take turns 200 ms apart.
    assert a[-1] - a[0] >= 2_000_000_000
    assert most_in_any_window(a, 900_000_000) <= 5
    # Key "b" has its own turns: its 3 runs started at once.
    assert b[-1] - b[0] < 1_000_000_000
