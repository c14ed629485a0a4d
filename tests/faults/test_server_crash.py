"""Scenario 2: the server SIGKILLed mid-load, restarted on the same file and address."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from stepd import Client, RunStatus, StepdError
from stepd.errors import ServerUnavailableError
from tests.e2e.harness import Server, Stack
from tests.faults import workflows as wf
from tests.faults.checker import (
    Snapshot,
    check_guarantees,
    read_runs,
    ready,
    settle,
    take_snapshot,
    trigger_all,
)

pytestmark = pytest.mark.slow

MODULES = ("tests.faults.workflows",)
CRASHES = 2
RUNS_PER_CYCLE = 3000  # the producers' cap; the crash comes long before
PARALLEL_TRIGGERS = 8
LOAD_TIMEOUT = 30.0


@pytest.mark.timeout(120)
async def test_a_sigkilled_server_loses_nothing_it_acknowledged(
    stack: Stack, tmp_path: Path, marks: Path
) -> None:
    server = stack.start_server(tmp_path / "stepd.db")
    # The workers are never restarted: they reconnect to each new server by themselves.
    await ready(stack.start_worker(server, MODULES, concurrency=16, wait=False))
    await ready(stack.start_worker(server, MODULES, concurrency=16, wait=False))

    acknowledged: list[str] = []  # every run whose Trigger was answered
    snapshots: list[Snapshot] = []  # what was committed right before each crash
    for cycle in range(CRASHES):
        snapshots.append(await _load_then_crash(server, marks, cycle, acknowledged))
        server = stack.start_server(server.database, address=server.address)

    async with Client(server.address) as client:
        inputs = [wf.Chain(seed=-n, steps=4, delay_ms=10) for n in range(1, 51)]
        after = await trigger_all(client, wf.chain, inputs, key_prefix="after", retry_for=20)
        expected = dict.fromkeys([*acknowledged, *after], RunStatus.COMPLETED)
        # Runs that were running at the crash are re-queued when the server starts,
        # not when their stored lease (30 s) expires.
        await settle(server.database, expected, within=20)
        # A trigger that committed but whose answer was lost in the crash made a
        # run nobody tracks: it must complete too.
        report = await check_guarantees(
            client,
            server.database,
            marks,
            expected,
            others=RunStatus.COMPLETED,
            snapshots=snapshots,
        )

    recovered = [r for r in report.runs.values() if r.dispatch_count > 1]
    assert len(recovered) >= 10, "too few runs were in flight at the crashes"


async def _load_then_crash(
    server: Server, marks: Path, cycle: int, acknowledged: list[str]
) -> Snapshot:
    """Trigger runs continuously; SIGKILL the server once runs are completing and
    in flight. Return what was committed right before the kill."""
    seeds = iter(range(cycle * RUNS_PER_CYCLE, (cycle + 1) * RUNS_PER_CYCLE))

    crashed = False

    async def produce(client: Client) -> None:
        for seed in seeds:
            job = wf.Chain(seed=seed, steps=4, delay_ms=10)
            while True:
                try:
                    # The key makes a retry safe: it returns the run a lost answer created.
                    handle = await client.trigger(wf.chain, job, idempotency_key=f"seed-{seed}")
                    break
                except StepdError as exc:
                    if crashed:  # the server is gone: this trigger was not acknowledged
                        return
                    if not isinstance(exc, ServerUnavailableError):
                        raise
                    # Not crashed yet: the client's channel still backs off from the
                    # previous crash (its first calls fail fast).
                    await asyncio.sleep(0.05)
            acknowledged.append(handle.run_id)
            await asyncio.sleep(0.02)

    deadline = time.monotonic() + LOAD_TIMEOUT
    async with Client(server.address) as client:
        # A run completes: a worker is (re)connected. Then the load starts.
        probe = wf.Chain(seed=-1000 - cycle, steps=1, delay_ms=1)
        [probe_id] = await trigger_all(
            client, wf.chain, [probe], key_prefix=f"probe{cycle}", retry_for=20
        )
        acknowledged.append(probe_id)
        await settle(server.database, [probe_id], within=20, only_these=True)
        completed_at_start = _count(server, "completed")
        producers = [asyncio.create_task(produce(client)) for _ in range(PARALLEL_TRIGGERS)]
        while not (
            _count(server, "completed") >= completed_at_start + 100
            and _count(server, "running") >= 20
        ):
            for producer in producers:
                if producer.done():
                    producer.result()  # raises what stopped it
                    raise AssertionError("a producer ran out of runs before the crash")
            assert time.monotonic() < deadline, "the load never reached the crash point"
            await asyncio.sleep(0.05)
        snapshot = take_snapshot(server.database, marks)
        crashed = True
        assert server.process.kill() == -signal.SIGKILL  # runs and triggers in flight
        await asyncio.gather(*producers)
    return snapshot


def _count(server: Server, status: str) -> int:
    return sum(r.status == status for r in read_runs(server.database).values())
