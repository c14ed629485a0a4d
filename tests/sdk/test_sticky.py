"""Sticky execution in the worker: a suspended run is kept live and a continuation
resumes it without replay; anything else asks the server for the full journal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stepd import Worker, WorkflowContext, step, workflow
from stepd._worker import CONTINUATION_MISSED, MAX_CACHED_RUNS

from .conftest import make_task
from .fake_server import FakeStream, FakeWorkerService, start_server
from .test_worker_stream import finals, until

RUNS: dict[str, int] = {}
UNWOUND: list[str] = []


@step
async def bump(label: str) -> int:
    RUNS[label] = RUNS.get(label, 0) + 1
    return RUNS[label]


@workflow(name="sticky_nap")
async def sticky_nap(ctx: WorkflowContext, label: str) -> int:
    try:
        first = await bump(label)
        await ctx.sleep(60)
        return first + await bump(f"{label}-after")
    finally:
        UNWOUND.append(label)


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    UNWOUND.clear()


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeWorkerService, str]]:
    fake = FakeWorkerService()
    server, address = await start_server(fake)
    try:
        yield fake, address
    finally:
        await server.stop(None)


def first_task(run_id: str, lease: int = 1) -> object:
    return make_task("sticky_nap", "1", input=run_id, run_id=run_id, lease_id=lease)


def continuation(run_id: str, lease: int, continues: int) -> object:
    task = make_task(
        "sticky_nap", "1", input=run_id, run_id=run_id, lease_id=lease, met=["sleep:1"]
    )
    task.continues_lease = continues
    return task


async def suspended(stream: FakeStream, run_id: str) -> None:
    await until(lambda: stream.kinds(run_id) == ["record_step", "suspend_run"])


async def start(
    address: str, max_cached_runs: int = MAX_CACHED_RUNS
) -> tuple[Worker, asyncio.Task[None]]:
    worker = Worker(address, [sticky_nap], shutdown_grace=5, max_cached_runs=max_cached_runs)
    return worker, asyncio.create_task(worker.run())


async def test_a_continuation_resumes_the_parked_run_under_its_new_lease(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    worker, task = await start(address)
    stream = await fake.wait_streams(1)
    assert stream.hello.max_cached_runs == worker.max_cached_runs > 0
    assert stream.hello.early_capacity == 1000  # runs met early wait without a slot
    stream.push(tasks=[first_task("r1")])
    await suspended(stream, "r1")
    await until(lambda: worker._session is not None and "r1" in worker._session._cache)
    stream.push(tasks=[continuation("r1", lease=2, continues=1)])
    await until(lambda: "r1" in finals(stream))
    assert stream.kinds("r1") == ["record_step", "suspend_run", "record_step", "complete_run"]
    assert [c.lease_id for c in stream.commands() if c.run_id == "r1"] == [1, 1, 2, 2]
    assert finals(stream)["r1"].complete_run.result.json == "2"
    assert RUNS == {"r1": 1, "r1-after": 1}  # nothing replayed, nothing ran twice
    assert UNWOUND == ["r1"]  # one execution, ended once
    await worker.stop()
    await asyncio.wait_for(task, 5)


async def test_a_continuation_the_worker_cannot_continue_is_released(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    worker, task = await start(address)
    stream = await fake.wait_streams(1)
    stream.push(tasks=[continuation("unknown", lease=5, continues=4)])
    stream.push(tasks=[first_task("r2")])
    await suspended(stream, "r2")
    stream.push(tasks=[continuation("r2", lease=3, continues=2)])  # not the lease it parked
    await until(lambda: "unknown" in finals(stream) and "r2" in finals(stream))
    for run_id in ("unknown", "r2"):
        assert finals(stream)[run_id].release_run.reason == CONTINUATION_MISSED
    await until(lambda: UNWOUND == ["r2"])  # the parked execution was let go
    # The server hands the run out again in full: it is replayed and completes.
    full = make_task(
        "sticky_nap", "1", input="r2", run_id="r2", lease_id=4, journal={"bump": 1}, met=["sleep:1"]
    )
    stream.push(tasks=[full])
    await until(lambda: finals(stream)["r2"].HasField("complete_run"))
    assert RUNS == {"r2": 1, "r2-after": 1}
    await worker.stop()
    await asyncio.wait_for(task, 5)


async def test_the_least_recent_run_is_evicted_from_a_full_cache(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    worker, task = await start(address, max_cached_runs=1)
    stream = await fake.wait_streams(1)
    stream.push(tasks=[first_task("a")])
    await suspended(stream, "a")
    stream.push(tasks=[first_task("b")])
    await suspended(stream, "b")
    await until(lambda: UNWOUND == ["a"])  # a unwound as a plain suspension
    stream.push(tasks=[continuation("a", lease=2, continues=1)])
    stream.push(tasks=[continuation("b", lease=2, continues=1)])
    await until(lambda: "a" in finals(stream) and "b" in finals(stream))
    assert finals(stream)["a"].release_run.reason == CONTINUATION_MISSED
    assert finals(stream)["b"].complete_run.result.json == "2"
    await worker.stop()
    await asyncio.wait_for(task, 5)


async def test_a_cancellation_of_the_parked_lease_lets_the_run_go(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    worker, task = await start(address)
    stream = await fake.wait_streams(1)
    stream.push(tasks=[first_task("c")])
    await suspended(stream, "c")
    await until(lambda: worker._session is not None and "c" in worker._session._cache)
    stream.push(cancellations=[{"run_id": "c", "lease_id": 1, "reason": "cancelled"}])
    await until(lambda: UNWOUND == ["c"])
    assert worker._session is not None and "c" not in worker._session._cache
    assert stream.kinds("c") == ["record_step", "suspend_run"]  # nothing sent for it
    await worker.stop()
    await asyncio.wait_for(task, 5)


async def test_without_a_cache_a_suspended_run_unwinds_at_once(
    service: tuple[FakeWorkerService, str],
) -> None:
    fake, address = service
    worker, task = await start(address, max_cached_runs=0)
    stream = await fake.wait_streams(1)
    assert stream.hello.max_cached_runs == 0
    stream.push(tasks=[first_task("d")])
    await suspended(stream, "d")
    await until(lambda: UNWOUND == ["d"])
    await worker.stop()
    await asyncio.wait_for(task, 5)


async def test_stop_lets_parked_runs_go(service: tuple[FakeWorkerService, str]) -> None:
    fake, address = service
    worker, task = await start(address)
    stream = await fake.wait_streams(1)
    stream.push(tasks=[first_task("e")])
    await suspended(stream, "e")
    await worker.stop()
    await asyncio.wait_for(task, 5)
    assert UNWOUND == ["e"]
    assert stream.kinds("e") == ["record_step", "suspend_run"]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_max_cached_runs_must_be_an_int_of_0_or_more(bad: object) -> None:
    with pytest.raises(ValueError, match="max_cached_runs"):
        Worker("localhost:1", [sticky_nap], max_cached_runs=bad)  # type: ignore[arg-type]
