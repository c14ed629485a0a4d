"""Current versions: a hello cannot strand runs on a version nobody serves; operators
list, pin, unpin and retire versions."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from stepd.v1 import admin_service_pb2 as admin
from stepd.v1 import admin_service_pb2_grpc
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness, start_harness


def admin_of(harness: Harness) -> admin_service_pb2_grpc.AdminServiceAsyncStub:
    return admin_service_pb2_grpc.AdminServiceStub(harness.channel)  # type: ignore[return-value]


async def versions(harness: Harness, name: str) -> dict[str, admin.WorkflowVersionInfo]:
    listed = await admin_of(harness).ListWorkflowVersions(
        admin.ListWorkflowVersionsRequest(workflow_name=name)
    )
    return {v.version: v for v in listed.versions}


async def hijack(harness: Harness, name: str, version: str = "999") -> None:
    """A hello that registers a new version of ``name``, then goes away."""
    stranger = harness.worker(name, version=version)
    await asyncio.wait_for(stranger.settings, 5)
    await stranger.close()
    harness.workers.remove(stranger)
    for _ in range(200):  # the server notices the stream ended
        if (await versions(harness, name))[version].connected_workers == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the stranger's stream never ended")


async def test_a_hello_for_a_new_version_cannot_redirect_runs(database: str) -> None:
    harness = await start_harness(database)
    try:
        legit = harness.worker("orders", version="1")
        await asyncio.wait_for(legit.settings, 5)
        await hijack(harness, "orders")
        run_id = await harness.trigger("orders")
        task = await legit.next_task()
        assert (task.run_id, task.workflow_version) == (run_id, "1")
        listed = await versions(harness, "orders")
        assert listed["1"].current and not listed["999"].current
        assert listed["999"].connected_workers == 0
    finally:
        await harness.close()
    # Nor after a restart: the stored registration of 999 changes nothing.
    harness = await start_harness(database)
    try:
        run_id = await harness.trigger("orders")  # nobody serves it yet: no version
        assert (await harness.get(run_id)).workflow_version == ""
        legit = harness.worker("orders", version="1")
        seen = set()
        for _ in range(2):  # the run of before the restart, and this one
            task = await legit.next_task()
            assert task.workflow_version == "1"
            seen.add(task.run_id)
        assert run_id in seen
    finally:
        await harness.close()


async def test_a_connected_newer_version_is_current_until_an_operator_pins_or_retires(
    database: str,
) -> None:
    harness = await start_harness(database)
    try:
        old = harness.worker("billing", version="1")
        await asyncio.wait_for(old.settings, 5)
        new = harness.worker("billing", version="2")
        await asyncio.wait_for(new.settings, 5)
        first = await harness.trigger("billing")
        assert (await new.next_task()).run_id == first  # the newest served version

        pinned = await admin_of(harness).PinWorkflowVersion(
            admin.PinWorkflowVersionRequest(workflow_name="billing", version="1")
        )
        assert pinned.version.pinned and pinned.version.current
        second = await harness.trigger("billing")
        assert (await old.next_task()).run_id == second

        with pytest.raises(grpc.aio.AioRpcError) as refused:  # unpin first
            await admin_of(harness).RetireWorkflowVersion(
                admin.RetireWorkflowVersionRequest(workflow_name="billing", version="1")
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        unpinned = await admin_of(harness).UnpinWorkflowVersion(
            admin.UnpinWorkflowVersionRequest(workflow_name="billing")
        )
        assert unpinned.was_pinned and unpinned.current_version == "2"
        retired = await admin_of(harness).RetireWorkflowVersion(
            admin.RetireWorkflowVersionRequest(workflow_name="billing", version="2")
        )
        assert retired.version.HasField("retire_time") and not retired.already_retired
        third = await harness.trigger("billing")
        assert (await old.next_task()).run_id == third  # 2 is served, but retired
        assert (await versions(harness, "billing"))["1"].current

        with pytest.raises(grpc.aio.AioRpcError) as explicit:
            await harness.trigger("billing", workflow_version="2")
        assert explicit.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "retired" in (explicit.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as pin_retired:
            await admin_of(harness).PinWorkflowVersion(
                admin.PinWorkflowVersionRequest(workflow_name="billing", version="2")
            )
        assert pin_retired.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await admin_of(harness).PinWorkflowVersion(
                admin.PinWorkflowVersionRequest(workflow_name="billing", version="7")
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await harness.close()


async def test_a_worker_serving_only_a_retired_version_gets_no_unversioned_runs(
    database: str,
) -> None:
    harness = await start_harness(database)
    try:
        await hijack(harness, "reports", version="5")
        await admin_of(harness).RetireWorkflowVersion(
            admin.RetireWorkflowVersionRequest(workflow_name="reports", version="5")
        )
        stranger = harness.worker("reports", version="5")
        run_id = await harness.trigger("reports")  # current: none served -> no version
        with pytest.raises(TimeoutError):
            await stranger.next_task(0.5)
        legit = harness.worker("reports", version="1")
        task = await legit.next_task()
        assert (task.run_id, task.workflow_version) == (run_id, "1")
    finally:
        await harness.close()


async def test_pins_and_retirements_survive_a_restart_and_list_pages(database: str) -> None:
    harness = await start_harness(database)
    try:
        for version in ("1", "2", "3"):
            worker = harness.worker("pages", version=version)
            await asyncio.wait_for(worker.settings, 5)
        stub = admin_of(harness)
        await stub.PinWorkflowVersion(
            admin.PinWorkflowVersionRequest(workflow_name="pages", version="2")
        )
        await stub.RetireWorkflowVersion(
            admin.RetireWorkflowVersionRequest(workflow_name="pages", version="3")
        )
    finally:
        await harness.close()
    harness = await start_harness(database)
    try:
        stub = admin_of(harness)
        first = await stub.ListWorkflowVersions(
            admin.ListWorkflowVersionsRequest(workflow_name="pages", page_size=2)
        )
        second = await stub.ListWorkflowVersions(
            admin.ListWorkflowVersionsRequest(
                workflow_name="pages", page_size=2, page_token=first.next_page_token
            )
        )
        assert [v.version for v in first.versions] == ["1", "2"] and first.next_page_token
        assert [v.version for v in second.versions] == ["3"] and not second.next_page_token
        by_version = {v.version: v for v in (*first.versions, *second.versions)}
        assert by_version["2"].pinned and by_version["2"].current
        assert by_version["3"].HasField("retire_time")
        run_id = await harness.trigger("pages")
        assert (await harness.get(run_id)).workflow_version == "2"
    finally:
        await harness.close()


async def test_an_event_starts_a_run_of_the_current_version_not_the_stranger_s(
    database: str,
) -> None:
    from tests.server.test_schedules import Hello, Registration

    harness = await start_harness(database)
    legit = Hello(harness, Registration(name="notify", version="1", event_triggers=["paid"]))
    try:
        assert (await legit.open()).HasField("settings")
        stranger = Hello(harness, Registration(name="notify", version="999"))
        assert (await stranger.open()).HasField("settings")
        stranger.close()  # registered 999 (without the trigger), and went away
        for _ in range(200):
            if not (await versions(harness, "notify"))["999"].connected_workers:
                break
            await asyncio.sleep(0.01)
        published = await harness.client.PublishEvent(wf.PublishEventRequest(name="paid"))
        (run_id,) = published.started_run_ids
        assert (await harness.get(run_id)).workflow_version == "1"
    finally:
        legit.close()
        await harness.close()
