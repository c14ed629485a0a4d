"""Scenario 4: cancelling running, pending and suspended runs while other runs go on."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from stepd.errors import FailedPreconditionError, NotFoundError
from tests.e2e.harness import Stack, eventually
from tests.faults import workflows as wf
from tests.faults.checker import (
    check_guarantees,
    read_log,
    read_runs,
    ready,
    settle,
    trigger_all,
)

pytestmark = pytest.mark.slow

MODULES = ("tests.faults.workflows",)
CAPACITY = 8
QUEUED = 12  # blocking runs triggered once every slot is taken: they stay pending
CHAIN_RUNS = 100
SLEEPERS = 24  # runs asleep in ctx.sleep (suspended) when half of them are cancelled
SLEEP_S = 3.0


@pytest.mark.timeout(60)
async def test_cancelled_runs_stop_and_the_others_complete(
    stack: Stack, tmp_path: Path, marks: Path
) -> None:
    server = stack.start_server(tmp_path / "stepd.db")
    await ready(stack.start_worker(server, MODULES, concurrency=CAPACITY, wait=False))

    def started(key: str) -> set[str]:
        return {x.run_id for x in read_log(marks, wf.EXECUTIONS_LOG) if x.step_key == key}

    async with Client(server.address) as client:
        try:
            # Every slot taken by a run blocked in its second step ...
            inputs = [wf.Blocking(seed=n) for n in range(CAPACITY)]
            holding = await trigger_all(client, wf.blocking, inputs)
            await eventually(
                lambda: started("block") == set(holding), within=15, what="every slot blocked"
            )
            # ... so these wait: more runs than the worker has room for.
            inputs = [wf.Blocking(seed=100 + n) for n in range(QUEUED)]
            queued = await trigger_all(client, wf.blocking, inputs)
            inputs_chain = [wf.Chain(seed=n, steps=3, delay_ms=5) for n in range(CHAIN_RUNS)]
            load = asyncio.create_task(trigger_all(client, wf.chain, inputs_chain))
            for run_id in queued:
                assert (await client.get_run(run_id)).status is RunStatus.PENDING

            cancel_running, cancel_pending = holding[: CAPACITY // 2], queued[: QUEUED // 2]
            cancelled = [*cancel_pending, *cancel_running]  # pending first: no slot frees up
            first = await asyncio.gather(*(client.cancel(r, reason="fault") for r in cancelled))
            # Cancelling again is harmless: the run stays cancelled, with the first reason.
            again = await asyncio.gather(*(client.cancel(r, reason="again") for r in cancelled))
            for info in (*first, *again):
                assert info.status is RunStatus.CANCELLED, info
                assert info.cancel_reason == "fault", info

            # The freed slots go to the waiting runs (chain load or queued blocking runs).
            chain_ids = await load

            def newcomers() -> set[str]:
                return {x.run_id for x in read_log(marks, wf.EXECUTIONS_LOG)} - set(holding)

            await eventually(
                lambda: len(newcomers()) >= len(cancel_running),
                within=20,
                what="the freed slots taken",
            )
        finally:
            (marks / wf.RELEASE_FILE).touch()  # let every blocked step go
        kept = [r for r in [*holding, *queued] if r not in cancelled]
        await settle(server.database, [*kept, *chain_ids], within=30)
        expected = {
            **dict.fromkeys([*kept, *chain_ids], RunStatus.COMPLETED),
            **dict.fromkeys(cancelled, RunStatus.CANCELLED),
        }
        report = await check_guarantees(client, server.database, marks, expected)

        with pytest.raises(FailedPreconditionError, match="already completed") as refused:
            await client.cancel(kept[0])
        assert refused.value.code == "FAILED_PRECONDITION"
        with pytest.raises(NotFoundError):
            await client.cancel("no-such-run")
        assert (await client.get_run(kept[0])).status is RunStatus.COMPLETED

    # A cancelled run the worker held stopped inside its blocking step: the step
    # was cut off (never finished, never recorded) and nothing after it ran.
    for run_id in cancel_running:
        assert [x.step_key for x in report.executions_of(run_id)] == ["link", "block"]
        assert [x.step_key for x in report.finishes_of(run_id)] == ["link"]
        seed = json.loads(report.runs[run_id].input_json)["seed"]
        assert report.recorded(run_id) == {"link": wf.next_value(seed, 1)}
    # A cancelled pending run never reached a worker.
    for run_id in cancel_pending:
        assert report.executions_of(run_id) == []
        assert report.runs[run_id].dispatch_count == 0


@pytest.mark.timeout(60)
async def test_cancelled_suspended_runs_never_wake(
    stack: Stack, tmp_path: Path, marks: Path
) -> None:
    server = stack.start_server(tmp_path / "stepd.db")
    await ready(stack.start_worker(server, MODULES, concurrency=CAPACITY, wait=False))

    def statuses(run_ids: list[str]) -> set[str]:
        runs = read_runs(server.database)
        return {runs[r].status if r in runs else "missing" for r in run_ids}

    async with Client(server.address) as client:
        # More sleepers than slots: asleep, they hold none, so all of them get to sleep.
        inputs = [wf.Sleepy(seed=n, sleep_s=SLEEP_S) for n in range(SLEEPERS)]
        sleepers = await trigger_all(client, wf.sleepy, inputs)
        await eventually(
            lambda: statuses(sleepers) == {"suspended"}, within=15, what="every sleeper asleep"
        )
        asleep_at = time.monotonic()  # every sleeper's timer is due by asleep_at + SLEEP_S

        # Cancel half of them while a load of other runs goes through the worker.
        inputs_chain = [wf.Chain(seed=n, steps=3, delay_ms=5) for n in range(CHAIN_RUNS)]
        load = asyncio.create_task(trigger_all(client, wf.chain, inputs_chain))
        cancelled = sleepers[::2]
        first = await asyncio.gather(*(client.cancel(r, reason="fault") for r in cancelled))
        again = await asyncio.gather(*(client.cancel(r, reason="again") for r in cancelled))
        for info in (*first, *again):
            assert info.status is RunStatus.CANCELLED, info
            assert info.cancel_reason == "fault", info
        chain_ids = await load

        # Past every timer: the cancelled runs' timers came due and woke nothing.
        kept = [r for r in sleepers if r not in cancelled]
        await settle(server.database, [*kept, *chain_ids], within=30)
        await asyncio.sleep(max(0.0, asleep_at + SLEEP_S + 0.5 - time.monotonic()))
        expected = {
            **dict.fromkeys([*kept, *chain_ids], RunStatus.COMPLETED),
            **dict.fromkeys(cancelled, RunStatus.CANCELLED),
        }
        report = await check_guarantees(client, server.database, marks, expected)

    for run_id in cancelled:
        # Dispatched once (to go to sleep), never again; the step after the sleep never ran.
        assert report.runs[run_id].dispatch_count == 1, report.runs[run_id]
        assert [x.step_key for x in report.executions_of(run_id)] == ["link"]
        seed = json.loads(report.runs[run_id].input_json)["seed"]
        assert report.recorded(run_id) == {"link": wf.next_value(seed, 1)}
    for run_id in kept:
        assert report.runs[run_id].dispatch_count == 2  # to sleep, then woken
        assert [x.step_key for x in report.executions_of(run_id)] == ["link", "link#2"]
