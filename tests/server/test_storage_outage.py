"""Storage that cannot be used answers UNAVAILABLE, and the standard health
service says NOT_SERVING until it is back; nothing acknowledged is lost.

The outage is real on each backend: PostgreSQL stops taking connections to
the test's database (``ALLOW_CONNECTIONS false``) and the server's connections
are terminated; on SQLite another process holds the write lock (a ``BEGIN
IMMEDIATE`` that does not end), so every write waits out the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.backends import postgres_url, query
from tests.server.conftest import Harness, start_harness

OK = worker_service_pb2.COMMAND_STATUS_OK
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.asynccontextmanager
async def outage(database: str) -> AsyncIterator[None]:
    """The database cannot be used inside the block."""
    if is_postgres_url(database):
        admin = postgres_url()
        assert admin is not None
        name = make_url(database).database
        await query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await query(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )
        try:
            yield
        finally:
            await query(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        return
    locker = sqlite3.connect(database, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        locker.execute("ROLLBACK")
        locker.close()


async def health_of(harness: Harness) -> int:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return int(answer.status)


async def health_becomes(harness: Harness, status: int, within: float = 40) -> None:
    async with asyncio.timeout(within):
        while True:
            if await health_of(harness) == status:
                return
            await asyncio.sleep(0.2)


async def unavailable(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE, raised.value
    assert len(raised.value.details() or "") < 200


def readyz(harness: Harness) -> int:
    """The HTTP status of ``/readyz``."""
    assert harness.running.http is not None
    try:
        with urllib.request.urlopen(f"{harness.running.http.url}/readyz", timeout=20) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.fixture
async def outage_harness(database: str) -> AsyncIterator[Harness]:
    h = await start_harness(database, http_address="127.0.0.1:0")
    yield h
    await h.close()


async def test_storage_down_is_unavailable_and_not_serving_until_it_is_back(
    outage_harness: Harness,
) -> None:
    harness = outage_harness
    worker = harness.worker("outage.w", capacity=4)
    acknowledged = await harness.trigger("outage.w")
    task = await worker.next_task(10)
    assert (await worker.record(task, "before", "1")).status == OK
    assert await health_of(harness) == SERVING

    async with outage(harness.database):
        trigger = wf.TriggerRequest(workflow_name="outage.w", input=types_pb2.Payload(json="{}"))
        await unavailable(harness.client.Trigger(trigger, timeout=30))
        await unavailable(
            harness.client.CancelRun(wf.CancelRunRequest(run_id=acknowledged), timeout=30)
        )
        if is_postgres_url(harness.database):  # SQLite's readers still read
            await unavailable(harness.client.GetRun(wf.GetRunRequest(run_id=acknowledged)))
        await health_becomes(harness, NOT_SERVING)
        assert await health_of(harness) == NOT_SERVING
        assert await asyncio.to_thread(readyz, harness) == 503

    await health_becomes(harness, SERVING)
    assert await asyncio.to_thread(readyz, harness) == 200
    # Writes go through again, and what was acknowledged before is all there.
    after = await harness.trigger("outage.w")
    assert (await worker.complete(task, '"done"')).status == OK
    run = await harness.get(acknowledged, wait=True)
    assert run.status == types_pb2.RUN_STATUS_COMPLETED, run
    steps = await harness.query(f"SELECT step_key FROM steps WHERE run_id = '{acknowledged}'")
    assert steps == [("before",)]
    assert (await harness.get(after)).status in (
        types_pb2.RUN_STATUS_PENDING,
        types_pb2.RUN_STATUS_RUNNING,
    )
