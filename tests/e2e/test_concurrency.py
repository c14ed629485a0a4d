"""Concurrency per key through a real server and real worker processes, on both
backends: runs of one key never overlap (checked from the step start and end
times the workers record) while other keys proceed; both cancel strategies;
runs started by events count too; a restart keeps the queue; GetRun says why
a run waits; on PostgreSQL two replicas enforce one global limit.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from stepd import Client, RunStatus
from stepd.errors import FailedPreconditionError
from tests.e2e.harness import ManagedProcess, Server, Stack, eventually, read_marks, release

MODULES = ("tests.e2e.concurrency_workflows",)
RESULT_TIMEOUT = 120.0


def job(tag: str, customer: str, **extra: Any) -> dict[str, Any]:
    return {"tag": tag, "customer": {"id": customer}, **extra}


def intervals(marks: Path, tag: str) -> dict[str, list[tuple[int, int, str]]]:
    """Per key, each run's (first start, last end, run id), by start."""
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    keys: dict[str, str] = {}
    for line in read_marks(marks, tag):
        key, run_id, what, at = line.split(" ")
        keys[run_id] = key
        if what == "start":
            starts[run_id] = min(starts.get(run_id, int(at)), int(at))
        else:
            ends[run_id] = max(ends.get(run_id, int(at)), int(at))
    per_key: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for run_id, start in starts.items():
        per_key[keys[run_id]].append((start, ends.get(run_id, 2**63), run_id))
    for runs in per_key.values():
        runs.sort()
    return per_key


def assert_no_overlap(runs: list[tuple[int, int, str]], limit: int = 1) -> None:
    """At no time were more than ``limit`` of the runs between start and end."""
    events = sorted([(s, 1) for s, _, _ in runs] + [(e, -1) for _, e, _ in runs])
    active = 0
    for _, change in events:
        active += change
        assert active <= limit, f"more than {limit} runs of one key were active: {runs}"


def start_worker(stack: Stack, server: Server, **options: Any) -> ManagedProcess:
    """Start a worker and wait until the server stored its limits (its hello)."""
    before = server.process.log_text().count(" connected (capacity ")
    process = stack.start_worker(server, MODULES, **options)
    deadline = time.monotonic() + 30
    while server.process.log_text().count(" connected (capacity ") <= before:
        assert time.monotonic() < deadline, "the worker never connected"
        time.sleep(0.02)
    return process


def started(marks: Path, tag: str) -> set[str]:
    return {line.split(" ")[1] for line in read_marks(marks, tag) if " start " in line}


async def test_fifty_runs_of_one_key_never_overlap_while_other_keys_proceed(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server, concurrency=20)
    async with Client(server.address) as client:
        # Key "slow" is held by a blocked run; its second run waits behind it.
        blocker = await client.trigger("per_customer", job("t", "slow", block=True))
        await eventually(lambda: blocker.run_id in started(marks, "t"), what="blocker started")
        queued = await client.trigger("per_customer", job("t", "slow"))
        key_a = [await client.trigger("per_customer", job("t", "a")) for _ in range(50)]
        others = [await client.trigger("per_customer", job("t", f"k{i}")) for i in range(10)]
        for handle in [*key_a, *others]:
            await handle.result(timeout=RESULT_TIMEOUT)
        # Everything else finished while key "slow" was still taken.
        info = await client.get_run(queued.run_id)
        assert info.status is RunStatus.PENDING
        assert info.concurrency_key == "slow"
        assert info.waiting_reason.startswith("queued behind key 'slow' of limit 'per_customer'")
        assert queued.run_id not in started(marks, "t")
        release(marks, "t")
        assert await blocker.result(timeout=RESULT_TIMEOUT) == "slow"
        assert await queued.result(timeout=RESULT_TIMEOUT) == "slow"
    per_key = intervals(marks, "t")
    assert len(per_key["a"]) == 50
    assert_no_overlap(per_key["a"])
    assert_no_overlap(per_key["slow"])
    # Queued in order: key "a" started in the order its runs were triggered.
    assert [run_id for _, _, run_id in per_key["a"]] == [h.run_id for h in key_a]


async def test_waiting_reason_counts_the_runs_ahead(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        first = await client.trigger("per_customer", job("w", "c1", block=True))
        await eventually(lambda: first.run_id in started(marks, "w"), what="first started")
        waiting = [await client.trigger("per_customer", job("w", "c1")) for _ in range(3)]
        info = await client.get_run(waiting[2].run_id)
        assert info.waiting_reason == (
            "queued behind key 'c1' of limit 'per_customer': 2 ahead (1 active of 1)"
        )
        assert (await client.get_run(first.run_id)).waiting_reason == ""
        # An explicit key overrides the input's.
        own = await client.trigger("per_customer", job("w", "c1"), concurrency_key="c2")
        assert await own.result(timeout=RESULT_TIMEOUT) == "c1"
        release(marks, "w")
        for handle in waiting:
            await handle.result(timeout=RESULT_TIMEOUT)
    # The run with its own key "c2" may overlap key c1's runs: leave it out.
    assert_no_overlap([run for run in intervals(marks, "w")["c1"] if run[2] != own.run_id])


async def test_cancel_in_progress_cancels_the_active_run(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        old = await client.trigger("latest_wins", job("ci", "c1", block=True))
        await eventually(lambda: old.run_id in started(marks, "ci"), what="old started")
        middle = await client.trigger("latest_wins", job("ci", "c1", block=True))
        new = await client.trigger("latest_wins", job("ci", "c1"))
        assert await new.result(timeout=RESULT_TIMEOUT) == "c1"
        for replaced in (old, middle):
            info = await client.get_run(replaced.run_id)
            assert info.status is RunStatus.CANCELLED
            assert "replaced by a newer run of key 'c1'" in (info.cancel_reason or "")
        release(marks, "ci")
    # Whether "middle" started before "new" came depends on timing; either
    # way it was cancelled, and "new" ran after the runs it replaced.
    per_key = intervals(marks, "ci")
    assert per_key["c1"][-1][2] == new.run_id


async def test_cancel_newest_refuses_the_new_run(stack: Stack, server: Server, marks: Path) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        first = await client.trigger("first_wins", job("cn", "c1", block=True))
        with pytest.raises(FailedPreconditionError, match=r"limit 'first_wins'.*key 'c1'"):
            await client.trigger("first_wins", job("cn", "c1"))
        other = await client.trigger("first_wins", job("cn", "c2"))
        assert await other.result(timeout=RESULT_TIMEOUT) == "c2"
        release(marks, "cn")
        assert await first.result(timeout=RESULT_TIMEOUT) == "c1"
        again = await client.trigger("first_wins", job("cn", "c1"))
        assert await again.result(timeout=RESULT_TIMEOUT) == "c1"


async def test_a_child_refused_by_cancel_newest_is_created_cancelled(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        first = await client.trigger("first_wins", job("cc", "c1", block=True))
        parent = await client.trigger("parent_of_first_wins", job("cc", "c1"))
        outcome = await parent.result(timeout=RESULT_TIMEOUT)
        assert outcome.startswith("cancelled: concurrency limit 'first_wins'")
        assert "key 'c1'" in outcome
        release(marks, "cc")
        assert await first.result(timeout=RESULT_TIMEOUT) == "c1"
    assert started(marks, "cc") == {first.run_id}


async def test_runs_started_by_events_share_the_limit(
    stack: Stack, server: Server, marks: Path
) -> None:
    start_worker(stack, server)
    async with Client(server.address) as client:
        # A run of per_customer holds key c1 of the shared limit.
        holder = await client.trigger("per_customer", job("ev", "c1", block=True))
        await eventually(lambda: holder.run_id in started(marks, "ev"), what="holder started")
        run_ids: list[str] = []
        for _ in range(3):
            published = await client.publish_event("order.placed", job("ev", "c1"))
            run_ids.extend(published.started_run_ids)
        assert len(run_ids) == 3
        for run_id in run_ids:
            assert (await client.get_run(run_id)).waiting_reason
        release(marks, "ev")
        for run_id in run_ids:
            assert await client.get_handle(run_id).result(timeout=RESULT_TIMEOUT) == "c1"
    per_key = intervals(marks, "ev")
    assert len(per_key["c1"]) == 4
    assert_no_overlap(per_key["c1"])


async def test_a_restart_keeps_the_queue(stack: Stack, server: Server, marks: Path) -> None:
    # Declare the limit, then stop the worker: the runs queue with none connected.
    first_worker = start_worker(stack, server)
    assert first_worker.stop() == 0
    async with Client(server.address) as client:
        handles = [await client.trigger("per_customer", job("rs", "c1")) for _ in range(10)]
    assert server.process.stop() == 0
    again = stack.start_server(server.database)
    start_worker(stack, again)
    async with Client(again.address) as client:
        for handle in handles:
            assert await client.get_handle(handle.run_id).result(timeout=RESULT_TIMEOUT) == "c1"
        listed = [info.run_id async for info in client.list_runs(workflow="per_customer")]
        assert sorted(listed) == sorted(h.run_id for h in handles)
    lines = read_marks(marks, "rs")
    assert len([line for line in lines if " start " in line]) == 10
    per_key = intervals(marks, "rs")
    assert_no_overlap(per_key["c1"])
    assert [run_id for _, _, run_id in per_key["c1"]] == [h.run_id for h in handles]


async def test_two_workflows_giving_one_limit_two_settings_are_refused(
    stack: Stack, server: Server
) -> None:
    worker = stack.start_worker(server, ("tests.e2e.concurrency_conflict",), wait=False)
    found = worker.wait_for_line(re.compile(r"workflows 'conflict_a' and 'conflict_b' .*"))
    assert "limit 'shared' with different settings" in found.group(0)


async def test_two_replicas_enforce_one_global_limit(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    servers = stack.start_replicas(pg_database, 2, args=("--db-pool-size", "8"))
    for replica in servers:
        start_worker(stack, replica, concurrency=10)
    handles = []
    clients = [Client(replica.address) for replica in servers]
    try:
        for i in range(30):
            handles.append(await clients[i % 2].trigger("per_customer", job("rp", "c1")))
        for i, handle in enumerate(handles):
            result = await clients[i % 2].get_handle(handle.run_id).result(timeout=RESULT_TIMEOUT)
            assert result == "c1"
    finally:
        for client in clients:
            await client.close()
    per_key = intervals(marks, "rp")
    assert len(per_key["c1"]) == 30
    assert_no_overlap(per_key["c1"])
