"""Hook tokens need the hook secret: a copy of the database cannot mint one."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from stepd.server.engine import hook_tokens
from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.backends import query
from tests.server.conftest import Harness, start_harness

SECRET = b"a" * 64
NEW_SECRET = b"b" * 64


async def waiting_on_a_hook(harness: Harness) -> worker_service_pb2.RunTask:
    """A run suspended on hook "hook:1"; its task (with the run's hook secret)."""
    worker = harness.worker("approve")
    await harness.trigger("approve")
    task = await worker.next_task()
    wait = worker_service_pb2.WaitCondition(wait_key="hook:1", hook=worker_service_pb2.HookWait())
    suspend = worker_service_pb2.SuspendRunCommand(waits=[wait])
    result = await worker.send(task, suspend_run=suspend)
    assert result.status == worker_service_pb2.COMMAND_STATUS_OK
    return task


async def execute(harness: Harness, token: str) -> grpc.StatusCode:
    request = wf.ExecuteHookRequest(token=token, payload=types_pb2.Payload(json="true"))
    try:
        await harness.client.ExecuteHook(request)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def backup(database: str, directory: Path) -> str:
    """A copy of a SQLite database's files (with its write-ahead log)."""
    source = str(directory / "backup.db")
    shutil.copyfile(database, source)
    for suffix in ("-wal", "-shm"):
        if Path(database + suffix).exists():
            shutil.copyfile(database + suffix, source + suffix)
    return source


async def copied_hook_key(database: str, tmp_path: Path) -> bytes:
    """What a reader of a database backup learns: the stored hook key."""
    source = database if is_postgres_url(database) else backup(database, tmp_path)
    (row,) = await query(source, "SELECT value FROM server_secrets WHERE name = 'hook_key'")
    return bytes.fromhex(row[0])


async def test_a_database_copy_cannot_mint_a_hook_token(database: str, tmp_path: Path) -> None:
    harness = await start_harness(database, hook_secrets=(SECRET,))
    try:
        task = await waiting_on_a_hook(harness)
        stolen = await copied_hook_key(database, tmp_path)
        for server_key in (stolen, *hook_tokens.server_keys(stolen, [])):
            forged = hook_tokens.make_token(
                hook_tokens.run_secret(server_key, task.run_id), task.run_id, "hook:1"
            )
            assert await execute(harness, forged) == grpc.StatusCode.NOT_FOUND
        real = hook_tokens.make_token(task.hook_secret, task.run_id, "hook:1")
        assert await execute(harness, real) == grpc.StatusCode.OK  # the worker's token works
    finally:
        await harness.close()


async def test_rotating_the_hook_secret_keeps_issued_tokens_until_the_old_one_goes(
    database: str,
) -> None:
    harness = await start_harness(database, hook_secrets=(SECRET,))
    try:
        task = await waiting_on_a_hook(harness)
    finally:
        await harness.close()
    issued = hook_tokens.make_token(task.hook_secret, task.run_id, "hook:1")

    harness = await start_harness(database, hook_secrets=(NEW_SECRET,))
    try:  # the old secret is gone: its tokens no longer verify
        assert await execute(harness, issued) == grpc.StatusCode.NOT_FOUND
    finally:
        await harness.close()
    harness = await start_harness(database, hook_secrets=(NEW_SECRET, SECRET))
    try:  # new first (it mints), old second (it still verifies)
        assert await execute(harness, issued) == grpc.StatusCode.OK
    finally:
        await harness.close()


@pytest.mark.sqlite_only
async def test_without_a_hook_secret_the_stored_key_is_used(database: str) -> None:
    harness = await start_harness(database)
    try:
        task = await waiting_on_a_hook(harness)
        stored = await copied_hook_key(database, Path(database).parent)
        assert task.hook_secret == hook_tokens.run_secret(stored, task.run_id)
    finally:
        await harness.close()
