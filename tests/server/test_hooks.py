"""Hooks: tokens derived from the run's secret, executed once, buffered, expiring."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from stepd.server.domain import now_ms
from stepd.server.engine import hook_tokens
from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness, RawWorker
from tests.server.test_signals_history import met, timer_wait

OK = worker_service_pb2.COMMAND_STATUS_OK


def hook_wait(key: str) -> worker_service_pb2.WaitCondition:
    return worker_service_pb2.WaitCondition(wait_key=key, hook=worker_service_pb2.HookWait())


def token_of(task: worker_service_pb2.RunTask, key: str = "hook:1") -> str:
    return hook_tokens.make_token(task.hook_secret, task.run_id, key)


async def execute(harness: Harness, token: str, json: str = '"ok"') -> str:
    request = wf.ExecuteHookRequest(token=token, payload=types_pb2.Payload(json=json))
    return str((await harness.client.ExecuteHook(request)).run_id)


async def suspend(
    worker: RawWorker, task: worker_service_pb2.RunTask, *waits: worker_service_pb2.WaitCondition
) -> None:
    command = worker_service_pb2.SuspendRunCommand(waits=list(waits))
    assert (await worker.send(task, suspend_run=command)).status == OK


async def expect_code(code: grpc.StatusCode, harness: Harness, token: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await execute(harness, token)
    assert err.value.code() == code
    return err.value.details() or ""


async def test_a_hook_executes_once_and_wakes_its_run(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    assert len(task.hook_secret) == 32
    token = token_of(task)
    await suspend(worker, task, hook_wait("hook:1"))
    assert await execute(harness, token, '{"approved": true}') == run_id
    woken = await worker.next_task()
    assert met(woken) == {"hook:1": '{"approved": true}'}
    assert token_of(woken) == token  # the same token on every dispatch
    assert "already executed" in await expect_code(
        grpc.StatusCode.FAILED_PRECONDITION, harness, token
    )
    stored = await harness.query("SELECT token_hash FROM hooks")
    assert stored == [(hook_tokens.token_hash(token),)]
    assert token not in str(await harness.query("SELECT * FROM hooks"))
    if not is_postgres_url(harness.database):  # SQLite: nowhere in the file either
        data = await asyncio.to_thread(Path(harness.database).read_bytes)
        assert token not in data.decode("latin-1")


async def test_an_early_execution_waits_for_the_run(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    assert await execute(harness, token_of(task), '"early"') == run_id
    await suspend(worker, task, hook_wait("hook:1"))
    woken = await worker.next_task()
    assert met(woken) == {"hook:1": '"early"'}


async def test_unknown_and_forged_tokens(harness: Harness) -> None:
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    forged = hook_tokens.make_token(b"\x00" * 32, task.run_id, "hook:1")
    for token in (forged, "h1.nope", "not-a-token"):
        await expect_code(grpc.StatusCode.NOT_FOUND, harness, token)
    await expect_code(grpc.StatusCode.INVALID_ARGUMENT, harness, "")


async def test_an_expired_hook(harness: Harness) -> None:
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    await suspend(worker, task, hook_wait("hook:1"), timer_wait("hook:1:timeout", now_ms()))
    woken = await worker.next_task()  # the timeout won
    assert "hook:1:timeout" in met(woken)
    assert "expired" in await expect_code(
        grpc.StatusCode.FAILED_PRECONDITION, harness, token_of(woken)
    )
    await worker.complete(woken, "null")
    other = token_of(woken, "hook:2")  # never waited on, and the run is over
    assert "expired" in await expect_code(grpc.StatusCode.FAILED_PRECONDITION, harness, other)
