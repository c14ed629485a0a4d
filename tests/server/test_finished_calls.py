"""A call that changes state finishes what it started when its caller goes away:
its write and what follows the commit (a woken run handed out, a cancelled run's
waiters answered) happen all the same. Reads are not kept running."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from stepd.server.api.finished_calls import FINISHED_METHODS, FinishedCalls
from stepd.server.security.roles import METHOD_RIGHTS, Right
from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness
from tests.server.test_signals_history import OK, signal_wait, suspend

#: Rights of calls that only look, start runs (Trigger finishes on its own) or serve.
NOT_FINISHED = {Right.READ, Right.CONNECT, Right.START, Right.SERVE}


def test_every_method_that_changes_state_finishes_once_started() -> None:
    changing = {
        method
        for method, right in METHOD_RIGHTS.items()
        if right not in NOT_FINISHED and not method.rpartition("/")[2].startswith("List")
    }
    assert changing == FINISHED_METHODS


@contextlib.asynccontextmanager
async def run_row_locked(database: str, run_id: str) -> AsyncIterator[None]:
    """Hold a lock that the server's next write to ``run_id`` waits for."""
    if is_postgres_url(database):
        url = make_url(database).set(drivername="postgresql")
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", run_id)
                yield
        finally:
            await conn.close()
        return
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


async def suspended_run(harness: Harness) -> str:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    assert await suspend(worker, task, signal_wait("signal:1", "go")) == OK
    return run_id


async def gone_while_writing(harness: Harness, run_id: str, call: Any) -> None:
    """Make ``call`` (with a short deadline) while the run's row is locked: its
    caller gives up while the write waits."""
    async with run_row_locked(harness.database, run_id):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_signal_whose_caller_went_away_still_wakes_its_run(harness: Harness) -> None:
    run_id = await suspended_run(harness)
    request = wf.SignalRequest(run_id=run_id, name="go", payload=types_pb2.Payload(json="1"))

    await gone_while_writing(harness, run_id, lambda **kw: harness.client.Signal(request, **kw))

    woken = await harness.workers[0].next_task(seconds=10)
    assert woken.run_id == run_id


async def test_a_cancel_whose_caller_went_away_still_answers_the_waiters(
    harness: Harness,
) -> None:
    run_id = await suspended_run(harness)
    wait = wf.GetRunRequest(run_id=run_id, wait=True)
    wait.wait_timeout.FromSeconds(60)  # far past the check below: only the end answers it
    waiting = asyncio.ensure_future(harness.client.GetRun(wait))
    request = wf.CancelRunRequest(run_id=run_id, reason="test")

    await gone_while_writing(harness, run_id, lambda **kw: harness.client.CancelRun(request, **kw))

    ended = await asyncio.wait_for(waiting, 10)
    assert ended.run.status == types_pb2.RUN_STATUS_CANCELLED


class Handler:
    """A grpc method handler with one behaviour (what ``wrap`` takes)."""

    def __init__(self, unary_unary: Any = None, unary_stream: Any = None) -> None:
        self.unary_unary = unary_unary
        self.unary_stream = unary_stream

    def _replace(self, **changes: Any) -> Handler:
        return Handler(**{"unary_unary": self.unary_unary, **changes})


async def test_the_caller_hears_its_cancellation_at_once_and_the_call_goes_on() -> None:
    calls = FinishedCalls()
    release = asyncio.Event()
    done: list[str] = []

    async def signal(request: str, context: None) -> str:
        await release.wait()
        done.append(request)
        raise RuntimeError("answered to no one")

    wrapped = calls.wrap("/stepd.v1.WorkflowService/Signal", Handler(signal))
    caller = asyncio.create_task(wrapped.unary_unary("s1", None))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert calls.unheard == 1 and done == []
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert done == ["s1"] and calls.unheard == 0


def test_reads_and_trigger_are_not_wrapped() -> None:
    calls = FinishedCalls()
    for method in ("GetRun", "ListRuns", "Trigger"):
        handler = Handler(lambda request, context: None)
        assert calls.wrap(f"/stepd.v1.WorkflowService/{method}", handler) is handler
