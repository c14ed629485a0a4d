"""Flow control besides concurrency per key, through a real server and real
worker processes on both backends: priorities (with one worker slot, higher
priority runs go first), rate limits on run starts and on steps, debounce,
what GetRun says about a waiting run, and restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stepd import Client
from stepd.errors import InvalidArgumentError
from stepd.history import RunEventType
from tests.e2e.harness import ManagedProcess, Server, Stack, eventually, read_marks, release
from tests.e2e.test_http import fetch, samples
from tests.e2e.test_ops_cli import ok, stepd

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


async def dispatched_at(client: Client, run_id: str) -> int:
    """When the server first handed the run to a worker (epoch ns, from its history)."""
    async for event in client.list_run_events(run_id):
        if event.type == RunEventType.DISPATCHED and event.time is not None:
            return int(event.time.timestamp() * 1e9)
    raise AssertionError(f"run {run_id} was never dispatched")


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
    # span holds more than 10, give or take two: these are the workers' own
    # marks, and a step that starts 100 ms late on a loaded machine (the suite
    # runs two processes per core) lets one more fall into a second.
    in_five = sum(1 for at in times if at - times[0] < 5_000_000_000)
    assert 45 <= in_five <= 55, in_five
    assert most_in_any_window(times, 1_000_000_000) <= 12
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
        # When the server started them (a worker may run one a little late).
        a = sorted([await dispatched_at(client, handle.run_id) for handle in key_a])
        b = sorted([await dispatched_at(client, handle.run_id) for handle in key_b])
    assert len(read_marks(marks, "s")) == 15
    # Key "a": 12 runs at 5 per second take turns 200 ms apart.
    assert a[-1] - a[0] >= 2_000_000_000
    assert most_in_any_window(a, 900_000_000) <= 5
    # Key "b" has its own turns: its 3 runs started at once.
    assert b[-1] - b[0] < 1_000_000_000


async def test_twenty_triggers_within_a_second_debounce_into_one_run_with_the_last_input(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        handles = []
        for n in range(20):
            job = {"tag": "d", "label": f"n{n}", "customer": "c1", "n": n}
            handles.append(await client.trigger("debounced", job))
            await asyncio.sleep(0.04)
        last_trigger = time.time_ns()
        other = await client.trigger("debounced", {"tag": "d", "customer": "c2", "n": 100})
        assert {h.run_id for h in handles} == {handles[0].run_id}
        assert [h.debounced for h in handles] == [False] + [True] * 19
        info = await client.get_run(handles[0].run_id)
        assert info.debounce_key == "c1"
        assert info.waiting_reason.startswith("debounced (key 'c1') until ")
        assert await handles[0].result(timeout=RESULT_TIMEOUT) == 19  # the last input
        assert await other.result(timeout=RESULT_TIMEOUT) == 100  # another key: its own run
        # An idempotency key names the run it created: sent again, it changes nothing.
        keyed = await client.trigger(
            "debounced", {"tag": "d", "customer": "c3", "n": 1}, idempotency_key="k1"
        )
        again = await client.trigger(
            "debounced", {"tag": "d", "customer": "c3", "n": 2}, idempotency_key="k1"
        )
        assert again.run_id == keyed.run_id and again.already_existed and not again.debounced
        assert await keyed.result(timeout=RESULT_TIMEOUT) == 1
        runs = [run async for run in client.list_runs(workflow="debounced")]
    assert len(runs) == 3
    lines = [line.split(" ") for line in read_marks(marks, "d")]
    c1 = [int(at) for label, _, at in lines if label.startswith("n")]
    assert len(c1) == 1, "one run for the 20 triggers"
    assert c1[0] - last_trigger >= 450_000_000, "it started a period after the last trigger"


async def test_max_wait_bounds_the_postponement_under_a_steady_stream(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    first_trigger: dict[str, int] = {}
    async with Client(server.address) as client:
        handles = []
        for n in range(40):  # one trigger every 0.1 s for 4 s: the key never goes quiet
            job = {"tag": "m", "label": f"n{n}", "customer": "c1", "n": n}
            sent = time.time_ns()
            handle = await client.trigger("debounced_max_wait", job)
            first_trigger.setdefault(handle.run_id, sent)
            handles.append(handle)
            await asyncio.sleep(0.1)
        results = {h.run_id: await h.result(timeout=RESULT_TIMEOUT) for h in handles}
    started = {
        run_id: int(at) for _, run_id, at in (line.split(" ") for line in read_marks(marks, "m"))
    }
    assert set(started) == set(results)
    # Each run started at most max_wait (1.5 s) after its first trigger (plus slack),
    # so the 4-second stream started several runs, the last with the last input.
    for run_id, at in started.items():
        assert at - first_trigger[run_id] <= 2_100_000_000, (run_id, at - first_trigger[run_id])
    assert 2 <= len(started) <= 4
    assert results[handles[-1].run_id] == 39


async def test_metrics_and_the_command_line_show_limits_and_queues(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        for _ in range(3):  # the first starts now, two wait an hour for their turn
            await client.trigger("hourly", {"tag": "q", "customer": "a"})
        for n in range(4):  # one pending run, folded four times
            await client.trigger("quiet_hour", {"tag": "q", "customer": "a", "n": n})
        blocker = await client.trigger(
            "one_at_a_time", {"tag": "q", "customer": "a", "block": True}
        )
        await eventually(
            lambda: any(blocker.run_id in line for line in read_marks(marks, "q")),
            what="blocker started",
        )
        for _ in range(2):
            await client.trigger("one_at_a_time", {"tag": "q", "customer": "a"})
        # A step rate limit is known once used.
        assert await (await client.trigger("rated_steps", "q2")).result(timeout=RESULT_TIMEOUT)
        status, text = await fetch("GET", f"{server.http_url}/metrics")
        assert status == 200
        found = samples(text)
        assert found[("stepd_flow_waiting", (("kind", "start_rate"), ("limit", "hourly")))] == 2
        assert found[("stepd_flow_waiting", (("kind", "debounce"), ("limit", "quiet_hour")))] == 1
        concurrency = (("kind", "concurrency"), ("limit", "one_at_a_time"))
        assert found[("stepd_flow_waiting", concurrency)] == 2
        assert found[("stepd_flow_keys_waiting", concurrency)] == 1
        assert found[("stepd_concurrency_active_runs", (("limit", "one_at_a_time"),))] == 1
        listed = json.loads(ok(stepd(server, "limits", "list", "--json")))
        by_name = {limit["name"]: limit for limit in listed}
        assert by_name["hourly"] == {
            "kind": "start_rate",
            "name": "hourly",
            "workflows": ["hourly"],
            "setting": "1 per 1h",
            "waiting": 2,
            "keys_waiting": 1,
        }
        assert by_name["one_at_a_time"]["setting"] == "1 active per key, queue"
        assert by_name["one_at_a_time"]["active_runs"] == 1
        assert by_name["quiet_hour"]["setting"] == "period 1h"
        assert by_name["api"]["kind"] == "step_rate"
        assert by_name["api"]["setting"] == "1 per 100ms per key"
        table = ok(stepd(server, "limits", "list"))
        assert table.splitlines()[0].split() == [
            "KIND",
            "NAME",
            "WORKFLOWS",
            "SETTING",
            "ACTIVE",
            "WAITING",
            "KEYS",
            "WAITING",
        ]
        release(marks, "q")
        await blocker.result(timeout=RESULT_TIMEOUT)


async def test_a_restart_loses_and_duplicates_no_queued_limited_or_debounced_run(
    stack: Stack, server: Server, marks: Path
) -> None:
    # Declare the settings, then stop the worker: every run waits with none connected.
    assert start_worker(stack, server).stop() == 0
    async with Client(server.address) as client:
        prioritized = [
            await client.trigger("ordered", {"tag": "rp", "label": label}, priority=priority)
            for label, priority in (("low", -1), ("normal", 0), ("high", 9), ("higher", 10))
        ]
        rated = [
            await client.trigger("rated_starts", {"tag": "rr", "label": "r", "customer": "r"})
            for _ in range(8)
        ]
        folded = [
            await client.trigger("debounced", {"tag": "rd", "customer": "d", "n": n})
            for n in range(5)
        ]
    assert {h.run_id for h in folded} == {folded[0].run_id}
    assert server.process.kill() != 0  # a crash, with the runs pending
    again = stack.start_server(server.database)
    start_worker(stack, again, concurrency=20)
    async with Client(again.address) as client:
        for handle, priority in zip(prioritized, (-1, 0, 9, 10), strict=True):
            assert (await client.get_run(handle.run_id)).priority == priority
        for handle in [*prioritized, *rated]:
            await client.get_handle(handle.run_id).result(timeout=RESULT_TIMEOUT)
        assert await client.get_handle(folded[0].run_id).result(timeout=RESULT_TIMEOUT) == 4
        for workflow, count in (("ordered", 4), ("rated_starts", 8), ("debounced", 1)):
            listed = [info async for info in client.list_runs(workflow=workflow)]
            assert len(listed) == count, workflow
        rated_starts = sorted([await dispatched_at(client, handle.run_id) for handle in rated])
    # Each run started once. The rated ones' turns passed while the server was
    # down: they took new turns rather than starting at once (a run released up
    # to 50 ms before a worker took it starts that much late: one more in a
    # second at most). The server's dispatch times count, not the worker's
    # marks: a worker just started runs its first runs late.
    assert sorted(labels_in_order(marks, "rp")) == ["high", "higher", "low", "normal"]
    assert len(read_marks(marks, "rr")) == 8
    spread = [(at - rated_starts[0]) // 1_000_000 for at in rated_starts]
    assert most_in_any_window(rated_starts, 1_000_000_000) <= 6, spread
    assert spread[-1] >= 1000, spread
    assert len(read_marks(marks, "rd")) == 1


async def test_two_replicas_enforce_one_rate_limit_and_one_debounce(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    servers = stack.start_replicas(pg_database, 2, args=("--db-pool-size", "8"))
    for replica in servers:
        start_worker(stack, replica, concurrency=30)
    clients = [Client(replica.address) for replica in servers]
    try:
        # Steps of one rate limit, on workers of both replicas: 10 per second in all.
        handles = [await clients[i % 2].trigger("rated_steps", "pr") for i in range(40)]
        pids = set()
        for i, handle in enumerate(handles):
            pids.add(await clients[i % 2].get_handle(handle.run_id).result(timeout=RESULT_TIMEOUT))
        # Triggers of one debounce key through both replicas fold into one run.
        folded = []
        for n in range(10):
            job = {"tag": "pd", "customer": "x", "n": n}
            folded.append(await clients[n % 2].trigger("debounced", job))
        assert {h.run_id for h in folded} == {folded[0].run_id}
        assert await clients[0].get_handle(folded[0].run_id).result(timeout=RESULT_TIMEOUT) == 9
    finally:
        for client in clients:
            await client.close()
    assert len(pids) == 2, "workers of both replicas ran steps"
    times = [at for at, _, _ in starts(marks, "pr")]
    assert len(times) == 40
    assert most_in_any_window(times, 1_000_000_000) <= 12  # the workers' marks, as above
    assert times[-1] - times[0] >= 3_500_000_000
    assert len(read_marks(marks, "pd")) == 1


async def test_events_of_one_key_debounce_into_one_run(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        for n in range(5):
            await client.publish_event("profile.changed", {"tag": "e", "customer": "c1", "n": n})
        await client.publish_event("profile.changed", {"tag": "e", "customer": "c2", "n": 50})
        await eventually(lambda: len(read_marks(marks, "e")) == 2, what="two runs started")
        runs = [run async for run in client.list_runs(workflow="debounced_events")]
        assert len(runs) == 2
        results = sorted(
            [await client.get_handle(r.run_id).result(timeout=RESULT_TIMEOUT) for r in runs]
        )
    assert results == [4, 50]  # the last event of each key
