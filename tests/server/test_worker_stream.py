"""The PollTask stream against a real in-process server and SQLite file."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from stepd.v1 import types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness, start_harness

OK = worker_service_pb2.COMMAND_STATUS_OK
DUPLICATE = worker_service_pb2.COMMAND_STATUS_DUPLICATE
LEASE_LOST = worker_service_pb2.COMMAND_STATUS_LEASE_LOST


async def test_run_is_handed_out_recorded_and_completed(harness: Harness) -> None:
    worker = harness.worker("greet")
    run_id = await harness.trigger("greet", '{"name": "Ada"}')
    task = await worker.next_task()
    assert (task.run_id, task.lease_id, task.dispatch_count) == (run_id, 1, 1)
    assert json.loads(task.input.json) == {"name": "Ada"}
    assert list(task.journal) == []
    assert (await harness.get(run_id)).status == types_pb2.RUN_STATUS_RUNNING

    waiting = asyncio.create_task(harness.get(run_id, wait=True))
    assert (await worker.record(task, "hello", '"Hello, Ada"')).status == OK
    assert (await worker.complete(task, '"done"')).status == OK
    run = await waiting
    assert run.status == types_pb2.RUN_STATUS_COMPLETED
    assert run.result.json == '"done"'
    assert run.HasField("end_time")


async def test_first_step_write_wins(harness: Harness) -> None:
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    assert (await worker.record(task, "s", "1")).status == OK
    again = await worker.record(task, "s", "2")
    assert again.status == DUPLICATE
    assert again.recorded_step.result.json == "1"


async def test_never_more_tasks_than_capacity(harness: Harness) -> None:
    worker = harness.worker("w", capacity=2)
    for _ in range(5):
        await harness.trigger("w")
    first = [await worker.next_task(), await worker.next_task()]
    with pytest.raises(TimeoutError):
        await worker.next_task(seconds=0.3)
    await worker.complete(first[0], "null")
    third = await worker.next_task()
    assert third.run_id not in {t.run_id for t in first}


async def test_broken_stream_requeues_with_journal(harness: Harness) -> None:
    first = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await first.next_task()
    await first.record(task, "charge", '{"paid": true}')
    await first.close()

    second = harness.worker("w")
    retry = await second.next_task()
    assert retry.run_id == run_id
    assert retry.lease_id == 2
    assert [e.step.step_key for e in retry.journal] == ["charge"]
    assert retry.journal[0].step.result.json == '{"paid": true}'


async def test_cancel_running_run_reaches_worker_and_fences_it(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    response = await harness.client.CancelRun(wf.CancelRunRequest(run_id=run_id, reason="user"))
    assert response.run.status == types_pb2.RUN_STATUS_CANCELLED
    assert not response.already_cancelled
    cancellation = await asyncio.wait_for(worker.cancellations.get(), 5)
    assert (cancellation.run_id, cancellation.lease_id) == (run_id, task.lease_id)
    assert (await worker.record(task, "late", "1")).status == LEASE_LOST
    assert (await worker.complete(task, "1")).status == LEASE_LOST
    again = await harness.client.CancelRun(wf.CancelRunRequest(run_id=run_id))
    assert again.already_cancelled
    run = await harness.get(run_id)
    assert (run.status, run.cancel_reason) == (types_pb2.RUN_STATUS_CANCELLED, "user")


async def test_cancel_pending_then_cancel_finished(harness: Harness) -> None:
    run_id = await harness.trigger("nobody-serves-this")
    response = await harness.client.CancelRun(wf.CancelRunRequest(run_id=run_id))
    assert response.run.status == types_pb2.RUN_STATUS_CANCELLED

    worker = harness.worker("w")
    done_id = await harness.trigger("w")
    await worker.complete(await worker.next_task(), "null")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.CancelRun(wf.CancelRunRequest(run_id=done_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already completed" in (err.value.details() or "")


async def test_restart_recovers_running_runs(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    await worker.record(task, "a", "1")
    database = harness.database
    await harness.close()

    restarted = await start_harness(database)
    try:
        assert (await restarted.get(run_id)).status == types_pb2.RUN_STATUS_PENDING
        second = restarted.worker("w")
        retry = await second.next_task()
        assert retry.run_id == run_id
        assert [e.step.step_key for e in retry.journal] == ["a"]
        assert (await second.complete(retry, "2")).status == OK
        assert (await restarted.get(run_id, wait=True)).result.json == "2"
    finally:
        await restarted.close()


async def test_idempotency_key_and_custom_run_id(harness: Harness) -> None:
    req = wf.TriggerRequest(workflow_name="w", idempotency_key="order-7", run_id="order-7-run")
    first = await harness.client.Trigger(req)
    second = await harness.client.Trigger(req)
    assert first.run.run_id == second.run.run_id == "order-7-run"
    assert (first.already_existed, second.already_existed) == (False, True)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.Trigger(wf.TriggerRequest(workflow_name="w", run_id="order-7-run"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("request_fields", "code", "text"),
    [
        ({"workflow_name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "workflow_name"),
        (
            {"workflow_name": "w", "input": types_pb2.Payload(json="{nope")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "not valid JSON",
        ),
        (
            {"workflow_name": "w", "input": types_pb2.Payload(encoding="avro", data=b"x")},
            grpc.StatusCode.INVALID_ARGUMENT,
            "encoding",
        ),
        (
            {"workflow_name": "w", "input": types_pb2.Payload(json='"' + "x" * 3_000_000 + '"')},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit",
        ),
        ({"workflow_name": "w", "run_id": "has space"}, grpc.StatusCode.INVALID_ARGUMENT, "run_id"),
    ],
)
async def test_bad_trigger_input(
    harness: Harness, request_fields: dict[str, object], code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.Trigger(wf.TriggerRequest(**request_fields))  # type: ignore[arg-type]
    assert err.value.code() == code
    assert text in (err.value.details() or "")
    listed = await harness.client.ListRuns(wf.ListRunsRequest())
    assert list(listed.runs) == []
    assert await harness.trigger("still-serving")


async def test_unknown_run_is_not_found(harness: Harness) -> None:
    for call in (
        harness.client.GetRun(wf.GetRunRequest(run_id="nope")),
        harness.client.CancelRun(wf.CancelRunRequest(run_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (err.value.details() or "")


async def test_list_runs_filters_and_pages(harness: Harness) -> None:
    ids = [await harness.trigger("a") for _ in range(7)]
    await harness.trigger("b")
    await harness.client.CancelRun(wf.CancelRunRequest(run_id=ids[0]))
    seen: list[str] = []
    token = ""
    while True:
        page = await harness.client.ListRuns(
            wf.ListRunsRequest(workflow_name="a", page_size=3, page_token=token)
        )
        assert len(page.runs) <= 3
        seen += [r.run_id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    cancelled = await harness.client.ListRuns(
        wf.ListRunsRequest(statuses=[types_pb2.RUN_STATUS_CANCELLED])
    )
    assert [r.run_id for r in cancelled.runs] == [ids[0]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.client.ListRuns(
            wf.ListRunsRequest(workflow_name="b", page_token=token or "x")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_hello_must_come_first(harness: Harness) -> None:
    from stepd.v1 import worker_service_pb2_grpc

    stub = worker_service_pb2_grpc.WorkerServiceStub(harness.channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield worker_service_pb2.PollTaskRequest(heartbeat=worker_service_pb2.WorkerHeartbeat())

    call = stub.PollTask(requests())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (err.value.details() or "")


async def test_one_workflows_backlog_does_not_starve_another(harness: Harness) -> None:
    worker = harness.worker("busy", "rare", capacity=1)
    await asyncio.wait_for(worker.settings, 5)  # registered: the runs get its version
    for _ in range(20):
        await harness.trigger("busy")
    rare_id = await harness.trigger("rare")
    handed = []
    for _ in range(3):
        task = await worker.next_task()
        handed.append(task.workflow_name)
        await worker.complete(task, "null")
    assert "rare" in handed, handed
    assert rare_id


async def test_a_workflow_with_runs_in_two_versions_takes_one_turn(harness: Harness) -> None:
    # Runs triggered before any worker declared the workflow are stored without
    # a version; later ones get the declared version: two queues of one workflow.
    for _ in range(5):
        await harness.trigger("busy")
    worker = harness.worker("busy", "rare", capacity=1)
    first = await worker.next_task()
    for _ in range(5):
        await harness.trigger("busy")
    for _ in range(3):
        await harness.trigger("rare")
    await worker.complete(first, "null")
    handed = []
    for _ in range(6):
        task = await worker.next_task()
        handed.append(task.workflow_name)
        await worker.complete(task, "null")
    assert handed.count("rare") == 3, handed  # every other turn, not every third


def _step(key: str, value: str) -> dict[str, object]:
    step = types_pb2.StepRecord(step_key=key, attempt=1, result=types_pb2.Payload(json=value))
    return {"record_step": worker_service_pb2.RecordStepCommand(step=step)}


async def test_one_runs_commands_apply_in_the_order_sent(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    complete = {"complete_run": worker_service_pb2.CompleteRunCommand()}
    results = await worker.send_batch(task, _step("a", "1"), _step("b", "2"), complete)
    assert [r.status for r in results] == [OK, OK, OK]
    assert (await harness.get(run_id)).status == types_pb2.RUN_STATUS_COMPLETED

    other_id = await harness.trigger("w")
    task = await worker.next_task()
    release = {"release_run": worker_service_pb2.ReleaseRunCommand(reason="stop")}
    results = await worker.send_batch(task, release, _step("late", "3"))
    assert [r.status for r in results] == [OK, LEASE_LOST]
    again = await worker.next_task()  # released, so handed out anew
    assert (again.run_id, again.lease_id) == (other_id, 2)
    assert list(again.journal) == []  # the late record was refused


async def test_the_server_says_it_applies_a_runs_commands_in_order(harness: Harness) -> None:
    worker = harness.worker("w")
    settings = await asyncio.wait_for(worker.settings, 5)
    assert settings.ordered_commands


async def test_a_runs_commands_apply_in_the_order_sent_across_messages(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    # Many records in one message (applied a slice at a time), the end in the next,
    # sent without waiting: the end must not overtake them.
    records = [_step(f"s{i}", str(i)) for i in range(100)]
    first = await worker.queue_batch(task, *records)
    end = worker_service_pb2.CompleteRunCommand(if_steps_recorded=True)
    second = await worker.queue_batch(task, {"complete_run": end})
    results = await asyncio.wait_for(asyncio.gather(*first, *second), 10)
    assert [r.status for r in results] == [OK] * 101
    assert (await harness.get(run_id)).status == types_pb2.RUN_STATUS_COMPLETED
    rows = await harness.query(f"SELECT COUNT(*) FROM steps WHERE run_id = '{run_id}'")
    assert rows == [(100,)]


async def test_an_end_behind_a_duplicate_record_is_refused_and_the_run_replayed(
    harness: Harness,
) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    assert [r.status for r in await worker.send_batch(task, _step("a", "1"))] == [OK]
    # The worker went on from its own outcome of "a" without waiting for the answer.
    end = worker_service_pb2.CompleteRunCommand(
        result=types_pb2.Payload(json='"from 2"'), if_steps_recorded=True
    )
    results = await worker.send_batch(task, _step("a", "2"), {"complete_run": end})
    assert [r.status for r in results] == [DUPLICATE, LEASE_LOST]
    assert "replayed" in results[1].message
    again = await worker.next_task()  # released at once: handed out anew
    assert (again.run_id, again.lease_id) == (run_id, task.lease_id + 1)
    assert [(e.step.step_key, e.step.result.json) for e in again.journal] == [("a", "1")]
    plain = worker_service_pb2.CompleteRunCommand(result=types_pb2.Payload(json='"from 1"'))
    assert (await worker.send(again, complete_run=plain)).status == OK
    run = await harness.get(run_id)
    assert (run.status, run.result.json) == (types_pb2.RUN_STATUS_COMPLETED, '"from 1"')


async def test_thousands_of_concurrent_waits_are_all_served(harness: Harness) -> None:
    # grpc-core's default cancels calls beyond 3,000 waiting for a handler.
    run_ids = [await harness.trigger("nobody-serves-this") for _ in range(40)]

    async def wait(run_id: str) -> int:
        request = wf.GetRunRequest(run_id=run_id, wait=True)
        request.wait_timeout.FromMilliseconds(500)
        return int((await harness.client.GetRun(request)).run.status)

    statuses = await asyncio.gather(*(wait(run_ids[i % 40]) for i in range(4000)))
    assert set(statuses) == {types_pb2.RUN_STATUS_PENDING}


async def test_a_run_triggered_before_any_worker_registered_is_pinned_on_claim(
    harness: Harness,
) -> None:
    run_id = await harness.trigger("late")  # no worker has registered "late" yet
    assert (await harness.get(run_id)).workflow_version == ""
    worker = harness.worker("late")  # serves version "1"
    task = await worker.next_task()
    assert (task.run_id, task.workflow_version) == (run_id, "1")
    assert (await harness.get(run_id)).workflow_version == "1"


def test_newest_served_version_is_numeric_when_it_can_be() -> None:
    from stepd.server.engine.sessions import WorkerSession

    session = WorkerSession("id", "w", frozenset({("a", "9"), ("a", "10"), ("b", "x")}), 1)
    assert session.newest_version("a") == "10"
    assert session.newest_version("b") == "x"
    assert session.newest_version("c") == ""
