"""Several ``stepd serve`` replicas on one PostgreSQL database, with real worker
processes: runs cross replicas promptly, timers and cron occasions fire once,
a starting replica steals nothing, and 1,000 mixed runs complete with no step
body run twice while one replica is SIGKILLed mid-load.

Runs only with ``STEPD_TEST_POSTGRES_URL`` set (see ``tests/backends.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from stepd.errors import RunCancelledError
from stepd.history import RunEvent, RunEventType
from stepd.schedules import Schedule
from tests.backends import query
from tests.e2e import replica_workflows as rw
from tests.e2e.harness import Server, Stack, eventually, replicas_target

MODULES = ("tests.e2e.replica_workflows",)
#: Small pools: the test server's max_connections is shared with other tests.
POOL = ("--db-pool-size", "8")
#: A fallback poll far longer than any wait below: what arrives sooner came by NOTIFY.
NO_POLL = ("--replica-poll-interval", "30")
RESULT_TIMEOUT = 60.0


def bodies(marks: Path) -> Counter[tuple[str, str]]:
    """How often each (run id, step) body started, over every worker process."""
    counts: Counter[tuple[str, str]] = Counter()
    for path in marks.glob("bodies-*.log"):
        for line in path.read_text().splitlines():
            run_id, name = line.split(" ")
            counts[(run_id, name)] += 1
    return counts


def connected_workers(server: Server) -> int:
    """How many worker streams a server logged as connected."""
    return server.process.log_text().count(" connected (capacity ")


async def test_a_run_triggered_on_one_replica_runs_on_a_worker_of_another(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    a, b = stack.start_replicas(pg_database, 2, args=(*POOL, *NO_POLL))
    stack.start_worker(b, MODULES)
    await eventually(lambda: connected_workers(b) == 1, what="the worker on B")
    async with Client(a.address) as on_a:
        for value in range(3):  # the first run also registers the workflow's version
            started = time.monotonic()
            handle = await on_a.trigger(rw.leaf, value)
            # Waited for on A, finished through B: A hears of the end by NOTIFY.
            assert await handle.result(timeout=RESULT_TIMEOUT) == value + 1
            elapsed = time.monotonic() - started
            assert elapsed < 5, f"took {elapsed:.1f} s: not NOTIFY (the poll is 30 s)"
    assert connected_workers(a) == 0 and connected_workers(b) == 1
    assert sum(bodies(marks).values()) == 3


async def test_a_signal_through_one_replica_wakes_a_run_held_through_another(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    a, b = stack.start_replicas(pg_database, 2, args=(*POOL, *NO_POLL))
    stack.start_worker(b, MODULES)
    await eventually(lambda: connected_workers(b) == 1, what="the worker on B")
    async with Client(a.address) as on_a, Client(b.address) as on_b:
        handle = await on_b.trigger(rw.mixed, rw.Mixed(kind="signal", value=1))
        await eventually(
            lambda: bodies(marks)[(handle.run_id, "first")] == 1, what="the first step"
        )
        await asyncio.sleep(0.3)  # the run suspends on B
        await on_a.signal(handle.run_id, "go", 10)
        assert await on_a.get_handle(handle.run_id).result(timeout=5) == 13


async def test_cancel_through_one_replica_stops_the_worker_of_another(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    a, b = stack.start_replicas(pg_database, 2, args=(*POOL, *NO_POLL))
    worker = stack.start_worker(b, MODULES, args=("--log-level", "info"))
    await eventually(lambda: connected_workers(b) == 1, what="the worker on B")
    async with Client(a.address) as on_a:
        handle = await on_a.trigger(rw.block, "never")
        await eventually(lambda: bodies(marks)[(handle.run_id, "wait")] == 1, what="the step")
        info = await on_a.cancel(handle.run_id, reason="changed my mind")
        assert info.status is RunStatus.CANCELLED
    # B heard of the end by NOTIFY and told its worker, which stopped the run.
    stopped = f"run {handle.run_id}: stopped by the server"
    await eventually(lambda: stopped in worker.log_text(), within=5, what="the worker stopping")


async def test_a_run_created_on_one_replica_and_ended_through_another_answers_its_waits(
    stack: Stack, pg_database: str
) -> None:
    """A replica waits for a run it created without reading it first; the end
    heard from another replica, before or after the wait began, answers it."""
    a, b = stack.start_replicas(pg_database, 2, args=(*POOL, *NO_POLL))
    async with Client(a.address) as on_a, Client(b.address) as on_b:
        # No worker anywhere: both runs stay queued until cancelled through B.
        before, after = [await on_a.trigger(rw.leaf, value) for value in (1, 2)]
        await on_b.cancel(before.run_id, reason="ended before the wait")
        await asyncio.sleep(1)  # A hears of it by NOTIFY meanwhile
        started = time.monotonic()
        with pytest.raises(RunCancelledError):
            await on_a.get_handle(before.run_id).result(timeout=5)
        waiting = asyncio.create_task(on_a.get_handle(after.run_id).result(timeout=5))
        await asyncio.sleep(0.5)  # the second wait has begun on A
        await on_b.cancel(after.run_id, reason="ended during the wait")
        with pytest.raises(RunCancelledError):
            await waiting
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"took {elapsed:.1f} s: not NOTIFY (the poll is 30 s)"


async def test_a_timer_fires_once_with_two_replicas(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    a, b = stack.start_replicas(pg_database, 2, args=POOL)
    stack.start_worker(b, MODULES)
    async with Client(a.address) as on_a:
        # Long enough that both replicas hold the timer (each loads timers due
        # within 10 s, every 5 s) and both try to fire it.
        handle = await on_a.trigger(rw.nap, 6.0)
        assert await handle.result(timeout=RESULT_TIMEOUT) == "rested"
    counts = bodies(marks)
    assert counts[(handle.run_id, "before")] == 1
    assert counts[(handle.run_id, "after")] == 1
    waits = await query(
        pg_database,
        f"SELECT status, count(*) FROM run_waits WHERE run_id = '{handle.run_id}' GROUP BY status",
    )
    assert waits == [("met", 1)]
    (dispatches,) = await query(
        pg_database, f"SELECT dispatch_count FROM runs WHERE run_id = '{handle.run_id}'"
    )
    assert dispatches == (2,)  # started, then woken once


async def test_a_cron_schedule_starts_one_run_per_occasion_with_two_replicas(
    stack: Stack, pg_database: str, tag: str
) -> None:
    a, b = stack.start_replicas(pg_database, 2, args=POOL)
    stack.start_worker(a, MODULES)
    stack.start_worker(b, MODULES)
    async with Client(b.address) as on_b, Client(a.address) as on_a:
        await on_a.create_schedule(
            rw.leaf, Schedule("* * * * * *", input=1, overlap="allow"), schedule_id=tag
        )
        await asyncio.sleep(4.5)
        await on_b.pause_schedule(tag)
    rows = await query(
        pg_database,
        f"SELECT schedule_time, count(*) FROM runs WHERE schedule_id = '{tag}' "
        "GROUP BY schedule_time ORDER BY schedule_time",
    )
    occasions = [occasion for occasion, _ in rows]
    assert all(count == 1 for _, count in rows), rows
    assert len(occasions) >= 3, rows
    # Consecutive seconds: no occasion was skipped by a replica either.
    assert [b - a for a, b in itertools.pairwise(occasions)] == [1000] * (len(occasions) - 1)


async def test_a_starting_replica_does_not_take_runs_a_live_replica_holds(
    stack: Stack, pg_database: str, marks: Path, tag: str
) -> None:
    args = (*POOL, "--lease-timeout", "3")
    a = stack.start_server(pg_database, args=args)
    stack.start_worker(a, MODULES)
    async with Client(a.address) as on_a:
        handle = await on_a.trigger(rw.block, tag)
        await eventually(lambda: bodies(marks)[(handle.run_id, "wait")] == 1, what="the step")
        b = stack.start_server(pg_database, args=args)  # a second replica starts
        stack.start_worker(b, MODULES)
        await asyncio.sleep(4)  # past a lease timeout: A keeps the lease alive
        (row,) = await query(
            pg_database, f"SELECT status, dispatch_count FROM runs WHERE run_id = '{handle.run_id}'"
        )
        assert row == ("running", 1)
        (marks / tag).touch()
        assert await handle.result(timeout=RESULT_TIMEOUT) == "unblocked"
    counts = bodies(marks)
    assert counts[(handle.run_id, "start")] == 1
    assert counts[(handle.run_id, "wait")] == 1


KINDS = ("steps", "sleep", "signal", "child")


def expected_result(kind: str, value: int) -> int:
    """What ``replica.mixed`` returns for a kind and an input value."""
    if kind == "signal":
        return value + 3  # +1, the signal's 1, +1
    if kind == "child":
        return 2 * value + 4  # v = value + 1; v + (v + 1); + 1
    return value + 2


async def test_a_thousand_runs_on_three_replicas_while_one_is_killed(
    stack: Stack, pg_database: str, marks: Path
) -> None:
    total = 1000
    args = (*POOL, "--lease-timeout", "3", "--replica-poll-interval", "1")
    a, b, c = stack.start_replicas(pg_database, 3, args=args)
    # Worker 1 uses A (and B when A goes away); worker 2 uses B. C has no worker:
    # runs triggered and signalled through it reach the workers by notification.
    stack.start_worker(replicas_target([a, b]), MODULES)
    stack.start_worker(replicas_target([b, c]), MODULES)
    await eventually(
        lambda: [connected_workers(s) for s in (a, b, c)] == [1, 1, 0], what="workers on A and B"
    )

    kinds: dict[str, str] = {}
    values: dict[str, int] = {}
    async with Client(a.address) as on_a, Client(b.address) as on_b, Client(c.address) as on_c:
        clients = [on_a, on_b, on_c]
        for start in range(0, total, 50):
            if start == total // 2:
                assert a.process.kill() < 0  # SIGKILL, mid-load
                clients = [on_b, on_c]
            batch = range(start, start + 50)
            handles = await asyncio.gather(
                *(
                    clients[i % len(clients)].trigger(
                        rw.mixed, rw.Mixed(kind=KINDS[i % 4], value=i)
                    )
                    for i in batch
                )
            )
            for i, handle in zip(batch, handles, strict=True):
                kinds[handle.run_id] = KINDS[i % 4]
                values[handle.run_id] = i
        signalled = [run_id for run_id, kind in kinds.items() if kind == "signal"]
        for start in range(0, len(signalled), 50):
            await asyncio.gather(*(on_c.signal(r, "go", 1) for r in signalled[start : start + 50]))

        results = await asyncio.gather(
            *(
                (on_b, on_c)[n % 2].get_handle(run_id).result(timeout=RESULT_TIMEOUT)
                for n, run_id in enumerate(kinds)
            ),
            return_exceptions=True,
        )
    if any(isinstance(result, BaseException) for result in results):
        stuck = await query(
            pg_database,
            "SELECT run_id, workflow_name, status, dispatch_count, lease_owner, "
            "start_time_not_before FROM runs WHERE status NOT IN ('completed') LIMIT 20",
        )
        waits = await query(
            pg_database,
            "SELECT w.run_id, w.wait_key, w.status, w.fire_time FROM run_waits w "
            "JOIN runs r ON r.run_id = w.run_id WHERE r.status <> 'completed' LIMIT 20",
        )
        raise AssertionError(f"runs did not finish: {stuck}\nwaits: {waits}")
    for run_id, result in zip(kinds, results, strict=True):
        assert result == expected_result(kinds[run_id], values[run_id]), run_id
    assert connected_workers(b) >= 2  # worker 1 moved over from the killed replica

    # The database: every run completed, each step recorded once.
    statuses = await query(pg_database, "SELECT status, count(*) FROM runs GROUP BY status")
    assert statuses == [("completed", total + total // 4)]
    duplicates = await query(
        pg_database,
        "SELECT run_id, step_key FROM steps GROUP BY run_id, step_key HAVING count(*) > 1",
    )
    assert duplicates == []
    (steps,) = await query(pg_database, "SELECT count(*) FROM steps")
    assert steps == (2 * total + 2 * (total // 4),)  # + each child's step, + its parent's entry

    # The bodies: each ran once, except in runs handed out again after the kill
    # (their worker lost the stream mid-step): at most once more per hand-out.
    released = dict(
        await query(
            pg_database,
            "SELECT run_id, count(*) FROM run_events WHERE type = 'released' GROUP BY run_id",
        )
    )
    counts = bodies(marks)
    children = {f"{run_id}/child:1": run_id for run_id, kind in kinds.items() if kind == "child"}
    expected = [(run_id, name) for run_id in kinds for name in ("first", "second")]
    expected += [(child, "leaf") for child in children]
    assert set(counts) == set(expected)
    again = {key: n for key, n in counts.items() if n > 1}
    for (run_id, name), n in again.items():
        assert n <= 1 + released.get(run_id, 0), (run_id, name, n, released.get(run_id))
    assert len(again) <= 200, f"{len(again)} step bodies ran more than once"


async def test_a_watcher_on_one_replica_sees_entries_committed_through_another(
    stack: Stack, pg_database: str
) -> None:
    # The default poll interval (2 s): a watcher on A re-reads that often, since
    # writes committed through B do not wake it.
    a, b = stack.start_replicas(pg_database, 2, args=POOL)
    stack.start_worker(b, ("tests.e2e.ops_workflows",))
    await eventually(lambda: connected_workers(b) == 1, what="the worker on B")
    async with Client(a.address) as on_a, Client(b.address) as on_b:
        handle = await on_b.trigger("ops.progress", {"name": "replicas"})
        seen: list[RunEvent] = []

        async def follow() -> None:
            async for event in on_a.watch_run(handle.run_id):
                seen.append(event)

        follower = asyncio.create_task(follow())
        await eventually(
            lambda: any(e.type is RunEventType.SUSPENDED for e in seen),
            within=RESULT_TIMEOUT,
            what="the suspension, seen on A",
        )
        assert not follower.done()
        await on_b.signal(handle.run_id, "go", True)
        await asyncio.wait_for(follower, RESULT_TIMEOUT)
    assert seen[-1].type is RunEventType.COMPLETED
    assert [e.payload for e in seen if e.type is RunEventType.PROGRESS][-1] == "finished"
