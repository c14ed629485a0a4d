"""Listings are bounded in bytes and read by position: ListRuns leaves payloads
out unless asked and pages by size; ListRunEvents reads only the page it
returns (both backends)."""

from __future__ import annotations

import json

from stepd.server.engine.validation import MAX_PAGE_BYTES
from stepd.server.store.postgres import is_postgres_url
from stepd.v1 import schedules_pb2, types_pb2, worker_service_pb2
from stepd.v1 import workflow_service_pb2 as wf
from tests.server.conftest import Harness

OK = worker_service_pb2.COMMAND_STATUS_OK
BIG = 1024 * 1024  # three of these pass the page budget (3 MiB), two do not
SLACK = 64 * 1024  # a page's bytes besides its payloads


def big_json(tag: int) -> str:
    return json.dumps(f"{tag}" + "x" * (BIG - 10))


async def test_list_runs_leaves_payloads_out_unless_asked(harness: Harness) -> None:
    run_id = await harness.trigger("w", '{"secret": 1}')
    plain = (await harness.client.ListRuns(wf.ListRunsRequest())).runs
    assert [(r.run_id, r.input.json) for r in plain] == [(run_id, "")]
    full = (await harness.client.ListRuns(wf.ListRunsRequest(include_payloads=True))).runs
    assert [(r.run_id, r.input.json) for r in full] == [(run_id, '{"secret": 1}')]


async def test_list_runs_pages_by_bytes(harness: Harness) -> None:
    created = [await harness.trigger("w", big_json(i)) for i in range(5)]
    request = wf.ListRunsRequest(include_payloads=True, page_size=100)
    listed: list[str] = []
    pages = 0
    while True:
        page = await harness.client.ListRuns(request)
        pages += 1
        assert 1 <= len(page.runs) <= 2
        assert page.ByteSize() <= MAX_PAGE_BYTES + SLACK
        listed += [r.run_id for r in page.runs if len(r.input.json) == len(big_json(0))]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert listed == created[::-1]
    assert pages == 3
    plain = await harness.client.ListRuns(wf.ListRunsRequest(page_size=100))
    assert len(plain.runs) == 5 and not plain.next_page_token


async def page_through(harness: Harness, run_id: str, page_size: int) -> list[types_pb2.RunEvent]:
    request = wf.ListRunEventsRequest(run_id=run_id, page_size=page_size)
    events: list[types_pb2.RunEvent] = []
    while True:
        page = await harness.client.ListRunEvents(request)
        assert page.ByteSize() <= MAX_PAGE_BYTES + BIG + SLACK
        events += page.events
        if not page.next_page_token:
            return events
        request.page_token = page.next_page_token


async def test_list_run_events_pages_by_position(harness: Harness) -> None:
    run_id = await harness.trigger("w")
    series = (
        "SELECT generate_series(1, 10002) AS i"
        if is_postgres_url(harness.database)
        else "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10002) "
        "SELECT i FROM n"
    )
    await harness.query(
        "INSERT INTO run_events (run_id, time, type, detail) "
        f"SELECT '{run_id}', 4102444800000 + i, 'released', 'r' || i FROM ({series}) AS s"
    )
    events = await page_through(harness, run_id, 100)
    assert len(events) == 10_003
    assert [e.sequence for e in events] == list(range(1, 10_004))
    assert events[0].type == types_pb2.RUN_EVENT_TYPE_TRIGGERED
    assert [e.detail for e in events[1:]] == [f"r{i}" for i in range(1, 10_003)]

    # A page reads only what follows its token: rows before it may go.
    first = await harness.client.ListRunEvents(
        wf.ListRunEventsRequest(run_id=run_id, page_size=1000)
    )
    await harness.query(
        f"DELETE FROM run_events WHERE run_id = '{run_id}' AND detail IN ('r1', 'r2', 'r3')"
    )
    second = await harness.client.ListRunEvents(
        wf.ListRunEventsRequest(run_id=run_id, page_token=first.next_page_token, page_size=2)
    )
    assert [(e.sequence, e.detail) for e in second.events] == [(1001, "r1000"), (1002, "r1001")]


async def test_list_run_events_pages_by_bytes(harness: Harness) -> None:
    worker = harness.worker("w")
    run_id = await harness.trigger("w")
    task = await worker.next_task()
    for i in range(4):
        assert (await worker.record(task, f"s{i}", big_json(i))).status == OK
    assert (await worker.complete(task, big_json(9))).status == OK
    events = await page_through(harness, run_id, 1000)
    kinds = [types_pb2.RunEventType.Name(e.type) for e in events]
    assert kinds == [
        "RUN_EVENT_TYPE_TRIGGERED",
        "RUN_EVENT_TYPE_DISPATCHED",
        *["RUN_EVENT_TYPE_STEP_COMPLETED"] * 4,
        "RUN_EVENT_TYPE_COMPLETED",
    ]
    assert [e.payload.json[:2] for e in events[2:]] == ['"0', '"1', '"2', '"3', '"9']
    assert [e.sequence for e in events] == list(range(1, 8))


async def test_list_schedules_pages_by_bytes(harness: Harness) -> None:
    for i in range(5):
        spec = schedules_pb2.ScheduleSpec(cron="@yearly", input=types_pb2.Payload(json=big_json(i)))
        await harness.client.CreateSchedule(
            wf.CreateScheduleRequest(schedule_id=f"s{i}", workflow_name="w", spec=spec)
        )
    request = wf.ListSchedulesRequest(page_size=100)
    listed: list[str] = []
    while True:
        page = await harness.client.ListSchedules(request)
        assert 1 <= len(page.schedules) <= 2
        assert page.ByteSize() <= MAX_PAGE_BYTES + SLACK
        listed += [s.schedule_id for s in page.schedules]
        assert all(len(s.spec.input.json) == len(big_json(0)) for s in page.schedules)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert listed == [f"s{i}" for i in range(5)]
