"""API keys: hashed at rest, worker keys limited to workflows, revocation and expiry
(also across replicas), and the key id in what a key did."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from stepd.server.domain import now_ms
from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import admin_service_pb2 as admin
from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import start_harness
from tests.server.secure_harness import SecureHarness, bearer, secure, start_secure

__all__ = ["secure"]

OK = worker_service_pb2.COMMAND_STATUS_OK


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def list_runs(secure: SecureHarness, key: str) -> grpc.StatusCode:
    return await code_of(secure.harness.client.ListRuns(wf.ListRunsRequest(), metadata=bearer(key)))


async def test_only_a_hash_of_each_key_is_stored(secure: SecureHarness) -> None:
    key_id, key = await secure.create_key("client")
    rows = await secure.harness.query("SELECT key_id, secret_hash, name, role FROM api_keys")
    stored = {row[0]: row for row in rows}
    assert stored[key_id][2:] == ("client-key", "client")
    for row in rows:
        assert key not in " ".join(str(value) for value in row)
        assert key.split("_", 2)[2] not in str(row)  # stepd_<key id>_<secret>
    listed = await secure.admin.ListApiKeys(
        admin.ListApiKeysRequest(), metadata=bearer(secure.admin_key)
    )
    assert {k.key_id for k in listed.keys} == set(stored)
    assert "secret" not in str(listed).lower()
    mine = next(k for k in listed.keys if k.key_id == key_id)
    bootstrap = next(k for k in listed.keys if k.key_id != key_id)
    assert mine.created_by == bootstrap.key_id  # made through the API by the admin key
    assert bootstrap.created_by == ""  # made on the database directly


async def test_a_worker_key_serves_only_the_workflows_it_names(secure: SecureHarness) -> None:
    _, key = await secure.create_key("worker", ("orders", "billing.*"))
    harness = secure.harness
    allowed = harness.worker("orders", "billing.invoice", metadata=bearer(key))
    assert (await asyncio.wait_for(allowed.settings, 5)).HasField("lease_timeout")

    refused = harness.worker("orders", "payroll", metadata=bearer(key))
    await asyncio.wait_for(refused.ended.wait(), 5)
    assert await refused.call.code() == grpc.StatusCode.PERMISSION_DENIED
    details = await refused.call.details()
    assert "may not serve payroll" in details and "orders" in details

    # The allowed worker gets runs of its workflows: the hello counted.
    run_id = await harness.client.Trigger(
        wf.TriggerRequest(workflow_name="orders"), metadata=bearer(secure.admin_key)
    )
    task = await allowed.next_task()
    assert task.run_id == run_id.run.run_id
    # A worker key can do nothing else.
    assert await list_runs(secure, key) == grpc.StatusCode.PERMISSION_DENIED


async def test_a_revoked_key_stops_at_once_and_its_worker_stream_is_closed(
    secure: SecureHarness,
) -> None:
    reader_id, reader = await secure.create_key("reader")
    worker_id, worker_key = await secure.create_key("worker", ("w",))
    worker = secure.harness.worker("w", metadata=bearer(worker_key))
    await asyncio.wait_for(worker.settings, 5)
    assert await list_runs(secure, reader) == grpc.StatusCode.OK

    revoked = await secure.revoke(reader_id)
    assert revoked.HasField("revoke_time")
    assert await list_runs(secure, reader) == grpc.StatusCode.UNAUTHENTICATED

    await secure.revoke(worker_id)
    await asyncio.wait_for(worker.ended.wait(), 5)  # closed now, not at its next message
    run_id = await secure.harness.client.Trigger(
        wf.TriggerRequest(workflow_name="w"), metadata=bearer(secure.admin_key)
    )
    again = secure.harness.worker("w", metadata=bearer(worker_key))
    await asyncio.wait_for(again.ended.wait(), 5)
    assert await again.call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in await again.call.details()
    assert worker.tasks.empty() and again.tasks.empty()
    run = await secure.harness.client.GetRun(
        wf.GetRunRequest(run_id=run_id.run.run_id), metadata=bearer(secure.admin_key)
    )
    assert run.run.status == types_pb2.RUN_STATUS_PENDING


async def test_a_key_stops_working_when_it_expires(secure: SecureHarness) -> None:
    _, key = await secure.create_key("reader", expire_ms=now_ms() + 1500)
    assert await list_runs(secure, key) == grpc.StatusCode.OK
    await asyncio.sleep(1.6)
    try:
        await secure.harness.client.ListRuns(wf.ListRunsRequest(), metadata=bearer(key))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in (exc.details() or "")
    else:
        raise AssertionError("an expired key was let in")


async def test_keys_are_checked_when_created(secure: SecureHarness) -> None:
    bad = [
        admin.CreateApiKeyRequest(role=admin.API_KEY_ROLE_READER),  # no name
        admin.CreateApiKeyRequest(name="n"),  # no role
        admin.CreateApiKeyRequest(name="n", role=admin.API_KEY_ROLE_WORKER),  # no workflows
        admin.CreateApiKeyRequest(name="n", role=admin.API_KEY_ROLE_WORKER, workflows=["a*b"]),
        admin.CreateApiKeyRequest(name="n", role=admin.API_KEY_ROLE_READER, workflows=["w"]),
    ]
    past = admin.CreateApiKeyRequest(name="n", role=admin.API_KEY_ROLE_READER)
    past.expire_time.FromMilliseconds(now_ms() - 1000)
    for request in [*bad, past]:
        code = await code_of(secure.admin.CreateApiKey(request, metadata=bearer(secure.admin_key)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, request
    unknown = secure.admin.RevokeApiKey(
        admin.RevokeApiKeyRequest(key_id="0123456789abcdef"), metadata=bearer(secure.admin_key)
    )
    assert await code_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_history_shows_the_key_that_cancelled_signalled_and_executed_a_hook(
    secure: SecureHarness,
) -> None:
    client_id, client_key = await secure.create_key("client")
    operator_id, operator_key = await secure.create_key("operator")
    stub = secure.harness.client
    run = (
        await stub.Trigger(wf.TriggerRequest(workflow_name="nobody"), metadata=bearer(client_key))
    ).run
    await stub.Signal(
        wf.SignalRequest(run_id=run.run_id, name="go", payload=types_pb2.Payload(json="1")),
        metadata=bearer(client_key),
    )
    await stub.CancelRun(
        wf.CancelRunRequest(run_id=run.run_id, reason="not needed"), metadata=bearer(operator_key)
    )
    history = await stub.ListRunEvents(
        wf.ListRunEventsRequest(run_id=run.run_id), metadata=bearer(client_key)
    )
    actors = {types_pb2.RunEventType.Name(e.type): e.actor_key_id for e in history.events}
    assert actors["RUN_EVENT_TYPE_SIGNAL_RECEIVED"] == client_id
    assert actors["RUN_EVENT_TYPE_CANCELLED"] == operator_id
    assert actors["RUN_EVENT_TYPE_TRIGGERED"] == ""


async def test_history_shows_the_key_that_published_an_event_or_executed_a_hook(
    secure: SecureHarness,
) -> None:
    from stepd.server.engine import hook_tokens

    client_id, client_key = await secure.create_key("client")
    worker = secure.harness.worker("w", metadata=bearer(secure.admin_key))
    stub = secure.harness.client
    waits = {
        "hook": worker_service_pb2.WaitCondition(
            wait_key="hook:1", hook=worker_service_pb2.HookWait()
        ),
        "event": worker_service_pb2.WaitCondition(
            wait_key="event:1", event=worker_service_pb2.EventWait(name="paid")
        ),
    }
    waits["event"].event.since.FromMilliseconds(now_ms() - 1000)
    for kind, wait in waits.items():
        await stub.Trigger(wf.TriggerRequest(workflow_name="w"), metadata=bearer(client_key))
        task = await worker.next_task()
        suspend = worker_service_pb2.SuspendRunCommand(waits=[wait])
        assert (await worker.send(task, suspend_run=suspend)).status == OK
        if kind == "hook":
            token = hook_tokens.make_token(task.hook_secret, task.run_id, "hook:1")
            await stub.ExecuteHook(wf.ExecuteHookRequest(token=token), metadata=bearer(client_key))
        else:
            await stub.PublishEvent(
                wf.PublishEventRequest(name="paid"), metadata=bearer(client_key)
            )
        history = await stub.ListRunEvents(
            wf.ListRunEventsRequest(run_id=task.run_id), metadata=bearer(client_key)
        )
        (met,) = [e for e in history.events if e.type == types_pb2.RUN_EVENT_TYPE_WAIT_MET]
        assert met.actor_key_id == client_id, kind
        await worker.next_task()  # woken


async def test_a_key_revoked_on_one_replica_is_refused_by_another_within_the_refresh(
    database: str,
) -> None:
    if not is_postgres_url(database):
        pytest.skip("replicas share a PostgreSQL database")
    one = await start_secure(database)
    two = await start_harness(database, auth="keys")
    try:
        key_id, key = await one.create_key("reader")
        other = two.client
        created_at = time.monotonic()
        # The other replica reads the keys it does not know (at most twice a second).
        while (
            await code_of(other.ListRuns(wf.ListRunsRequest(), metadata=bearer(key)))
            != grpc.StatusCode.OK
        ):
            assert time.monotonic() - created_at < 2.0, "a new key unknown after the refresh"
            await asyncio.sleep(0.05)
        await one.revoke(key_id)
        revoked_at = time.monotonic()
        while True:
            code = await code_of(other.ListRuns(wf.ListRunsRequest(), metadata=bearer(key)))
            if code == grpc.StatusCode.UNAUTHENTICATED:
                break
            assert code == grpc.StatusCode.OK
            assert time.monotonic() - revoked_at < 2.0 + 1.0, "still accepted after the refresh"
            await asyncio.sleep(0.05)
        assert await list_runs(one, key) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await two.close()
        await one.close()


async def test_open_servers_record_no_key(database: str) -> None:
    harness = await start_harness(database)
    try:
        run_id = await harness.trigger("nobody")
        await harness.client.CancelRun(wf.CancelRunRequest(run_id=run_id))
        history = await harness.client.ListRunEvents(wf.ListRunEventsRequest(run_id=run_id))
        assert [e.actor_key_id for e in history.events] == ["", ""]
    finally:
        await harness.close()


async def test_key_schedule_and_version_changes_are_audited_with_the_key_id(
    secure: SecureHarness, caplog: pytest.LogCaptureFixture
) -> None:
    from stepd.v1 import schedules_pb2

    admin_id = (
        (
            await secure.admin.ListApiKeys(
                admin.ListApiKeysRequest(), metadata=bearer(secure.admin_key)
            )
        )
        .keys[0]
        .key_id
    )
    operator_id, operator = await secure.create_key("operator")
    worker = secure.harness.worker("w", metadata=bearer(secure.admin_key))
    await asyncio.wait_for(worker.settings, 5)
    with caplog.at_level("INFO", logger="stepd.audit"):
        await secure.harness.client.CreateSchedule(
            wf.CreateScheduleRequest(
                schedule_id="nightly",
                workflow_name="w",
                spec=schedules_pb2.ScheduleSpec(cron="0 3 * * *"),
            ),
            metadata=bearer(operator),
        )
        await secure.admin.PinWorkflowVersion(
            admin.PinWorkflowVersionRequest(workflow_name="w", version="1"),
            metadata=bearer(secure.admin_key),
        )
        new_id, new_key = await secure.create_key("reader")
    lines = [r.getMessage() for r in caplog.records if r.name == "stepd.audit"]
    assert f"CreateSchedule by key {operator_id}: schedule_id='nightly' workflow_name='w'" in lines
    assert f"PinWorkflowVersion by key {admin_id}: workflow_name='w' version='1'" in lines
    (created,) = [line for line in lines if line.startswith("CreateApiKey")]
    assert created.startswith(f"CreateApiKey by key {admin_id}: key_id='{new_id}'")
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (new_key, operator, secure.admin_key):
        assert secret not in everything
