"""A command or a claim the server cannot apply never loops and never strands
its run: the run goes out again after a growing delay, and after a few faults
fails with FAILURE_REASON_SERVER_ERROR (both backends).

The faults are real refusals of the database: a trigger (SQLite) or a check
constraint (PostgreSQL) added to the test's database refuses one step key, or
the claim of runs with one run id prefix.
"""

from __future__ import annotations

import asyncio

from stepd.server.engine.faults import FAULT_LIMIT, SERVER_ERROR_TYPE
from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import types_pb2, worker_service_pb2
from tests.backends import query
from tests.server.conftest import Harness

INTERNAL_ERROR = worker_service_pb2.COMMAND_STATUS_INTERNAL_ERROR

POISON_STEP = {
    "sqlite": (
        "CREATE TRIGGER poison_step BEFORE INSERT ON steps WHEN NEW.step_key = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned step'); END"
    ),
    "postgres": (
        "ALTER TABLE steps ADD CONSTRAINT poison_step CHECK (step_key <> 'poison') NOT VALID"
    ),
}
POISON_CLAIM = {
    "sqlite": (
        "CREATE TRIGGER poison_claim BEFORE UPDATE OF status ON runs "
        "WHEN NEW.status = 'running' AND NEW.run_id LIKE 'poison%' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned claim'); END"
    ),
    "postgres": (
        "ALTER TABLE runs ADD CONSTRAINT poison_claim "
        "CHECK (status <> 'running' OR run_id NOT LIKE 'poison%') NOT VALID"
    ),
}
CURE_CLAIM = {
    "sqlite": "DROP TRIGGER poison_claim",
    "postgres": "ALTER TABLE runs DROP CONSTRAINT poison_claim",
}


def backend_of(database: str) -> str:
    return "postgres" if is_postgres_url(database) else "sqlite"


async def ended(harness: Harness, run_id: str, within: float = 60) -> types_pb2.Run:
    """The run once it ended (asserting that it does within ``within`` seconds)."""
    async with asyncio.timeout(within):
        while True:
            run = await harness.get(run_id)
            if run.status in (types_pb2.RUN_STATUS_FAILED, types_pb2.RUN_STATUS_COMPLETED):
                return run
            await asyncio.sleep(0.1)


async def test_a_command_the_database_refuses_backs_off_and_fails_the_run(
    harness: Harness,
) -> None:
    await query(harness.database, POISON_STEP[backend_of(harness.database)])
    worker = harness.worker("faulty.w", capacity=1)
    run_id = await harness.trigger("faulty.w")
    for _ in range(FAULT_LIMIT):
        task = await worker.next_task(40)
        assert task.run_id == run_id
        result = await worker.record(task, "poison", "1")
        assert result.status == INTERNAL_ERROR, result
        assert "retried" in result.message
    run = await ended(harness, run_id)
    assert run.status == types_pb2.RUN_STATUS_FAILED, run
    assert run.failure_reason == types_pb2.FAILURE_REASON_SERVER_ERROR
    assert run.error.type == SERVER_ERROR_TYPE
    assert f"failed {FAULT_LIMIT} times" in run.error.message, run.error.message
    assert run.dispatch_count == FAULT_LIMIT
    assert worker.tasks.empty()  # handed out no more


async def test_a_failed_claim_puts_the_run_back(harness: Harness) -> None:
    backend = backend_of(harness.database)
    await query(harness.database, POISON_CLAIM[backend])
    worker = harness.worker("claims.w", capacity=1)
    poisoned = await harness.trigger("claims.w", run_id="poison-1")
    other = await harness.trigger("claims.w")
    # The poisoned run was popped first, its claim failed, and the slot went on.
    task = await worker.next_task(20)
    assert task.run_id == other
    await worker.complete(task, "1")
    await asyncio.sleep(1.0)  # a claim or two more fail meanwhile
    await query(harness.database, CURE_CLAIM[backend])
    task = await worker.next_task(30)
    assert task.run_id == poisoned
    await worker.complete(task, "2")
    run = await ended(harness, poisoned)
    assert run.status == types_pb2.RUN_STATUS_COMPLETED, run


async def test_a_claim_that_always_fails_fails_the_run(harness: Harness) -> None:
    await query(harness.database, POISON_CLAIM[backend_of(harness.database)])
    worker = harness.worker("claims.w", capacity=1)
    poisoned = await harness.trigger("claims.w", run_id="poison-2")
    run = await ended(harness, poisoned)
    assert run.status == types_pb2.RUN_STATUS_FAILED, run
    assert run.failure_reason == types_pb2.FAILURE_REASON_SERVER_ERROR
    assert "hand out" in run.error.message, run.error.message
    assert run.dispatch_count == 0
    # The worker is still served.
    other = await harness.trigger("claims.w")
    task = await worker.next_task(20)
    assert task.run_id == other
