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
