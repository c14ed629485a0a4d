"""A retried request (same request id) gets the first answer, whatever happened
since: a client whose first answer was lost can tell its call took effect."""

from __future__ import annotations

from stepd.v1 import schedules_pb2, types_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness

OK = 1


async def test_a_signal_retried_after_the_run_ended_gets_the_first_answer(
    harness: Harness,
) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    signal = wf.SignalRequest(
        run_id=run_id, name="go", payload=types_pb2.Payload(json="1"), request_id="req-1"
    )
    assert (await harness.client.Signal(signal)).run_id == run_id
    assert (await worker.complete(task, "null")).status == OK
    assert (await harness.get(run_id)).status == types_pb2.RUN_STATUS_COMPLETED

    again = await harness.client.Signal(signal)  # the first answer was lost: retry
    assert again.run_id == run_id
    received = await harness.query(
        f"SELECT count(*) FROM signals WHERE run_id = '{run_id}' AND request_id = 'req-1'"
    )
    assert received == [(1,)]


async def test_a_retried_trigger_schedule_returns_its_run_and_cancels_nothing(
    harness: Harness,
) -> None:
    spec = schedules_pb2.ScheduleSpec(
        cron="@yearly", overlap_policy=schedules_pb2.SCHEDULE_OVERLAP_POLICY_CANCEL_PREVIOUS
    )
    await harness.client.CreateSchedule(
        wf.CreateScheduleRequest(schedule_id="s", workflow_name="w", spec=spec)
    )
    request = wf.TriggerScheduleRequest(schedule_id="s", request_id="once")
    first = (await harness.client.TriggerSchedule(request)).run
    again = (await harness.client.TriggerSchedule(request)).run
    assert again.run_id == first.run_id
    assert (await harness.get(first.run_id)).status == types_pb2.RUN_STATUS_PENDING

    await harness.client.DeleteSchedule(wf.DeleteScheduleRequest(schedule_id="s"))
    after_delete = (await harness.client.TriggerSchedule(request)).run
    assert after_delete.run_id == first.run_id
