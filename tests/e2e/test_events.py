"""Events through a real server and real worker processes: ``ctx.wait_for_event`` and
``Client.publish_event``."""

import asyncio
import signal
import time
from pathlib import Path

from stepd import Client, RunStatus
from stepd.history import RunEventType
from tests.e2e import workflows as wf
from tests.e2e.harness import Server, Stack, eventually, read_marks, release
from tests.e2e.test_grpcurl import call
from tests.e2e.test_signals import RESULT_TIMEOUT, history, met_waits, wait_for_status

STEP_COMPLETED = RunEventType.STEP_COMPLETED

QUIET = 0.3  # seconds to watch a suspended run stay suspended


async def stays_suspended(client: Client, run_id: str) -> None:
    """The run is suspended and still is a moment later, never dispatched again."""
    await wait_for_status(client, run_id, RunStatus.SUSPENDED)
    await asyncio.sleep(QUIET)
    info = await client.get_run(run_id)
    assert (info.status, info.dispatch_count) == (RunStatus.SUSPENDED, 1)


# -- matching -----------------------------------------------------------------------------


async def test_a_matching_event_wakes_every_run_waiting_for_it(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    first = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7))
    second = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7))
    for handle in (first, second):
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    published = await client.publish_event("order.paid", {"order": 7, "amount": 30, "by": "card"})

    assert sorted(published.woken_run_ids) == sorted([first.run_id, second.run_id])
    assert not published.already_published and published.event_id
    for handle in (first, second):
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        assert result == {"order": 7, "paid": 30}
        assert await met_waits(client, handle.run_id) == ["event:1"]
    assert read_marks(marks, tag) == ["invoiced", "invoiced"]  # no step ran twice


async def test_an_event_that_does_not_match_leaves_the_run_waiting(
    server: Server, worker: object, client: Client, tag: str
) -> None:
    handle = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    other_order = await client.publish_event("order.paid", {"order": 8, "amount": 1})
    other_name = await client.publish_event("order.refunded", {"order": 7, "amount": 1})
    not_an_object = await client.publish_event("order.paid", [7])
    assert other_order.woken_run_ids == other_name.woken_run_ids == ()
    assert not_an_object.woken_run_ids == ()
    await stays_suspended(client, handle.run_id)

    later = await client.publish_event("order.paid", {"order": 7, "amount": 12})
    assert later.woken_run_ids == (handle.run_id,)
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"order": 7, "paid": 12}


async def test_matching_compares_json_values_with_their_types(
    server: Server, worker: object, client: Client, tag: str
) -> None:
    name = f"review-{tag}"
    match = {"approved": True, "score": 1, "tags": [True]}
    handle = await client.trigger(wf.await_event, wf.Listening(tag=tag, name=name, match=match))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    for wrong in (
        {"approved": 1, "score": 1, "tags": [True]},  # 1 is not true
        {"approved": True, "score": True, "tags": [True]},  # true is not 1
        {"approved": True, "score": 1, "tags": [1]},  # nor inside a list
    ):
        assert (await client.publish_event(name, wrong)).woken_run_ids == ()
    await stays_suspended(client, handle.run_id)

    right = {"approved": True, "score": 1.0, "tags": [True], "by": "ada"}  # 1.0 is 1
    assert (await client.publish_event(name, right)).woken_run_ids == (handle.run_id,)
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == right


async def test_a_duplicate_event_id_wakes_nothing_more(
    server: Server, worker: object, client: Client, tag: str
) -> None:
    paid = {"order": 7, "amount": 30}
    first = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7))
    await wait_for_status(client, first.run_id, RunStatus.SUSPENDED)
    sent = await client.publish_event("order.paid", paid, event_id=f"{tag}-pay")
    assert sent.woken_run_ids == (first.run_id,) and sent.event_id == f"{tag}-pay"
    await asyncio.wait_for(first.result(), RESULT_TIMEOUT)

    # A second run waits for the same order; the retried publish is not a new event.
    second = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7))
    await wait_for_status(client, second.run_id, RunStatus.SUSPENDED)
    again = await client.publish_event("order.paid", paid, event_id=f"{tag}-pay")
    assert (again.already_published, again.woken_run_ids) == (True, ())
    await stays_suspended(client, second.run_id)

    fresh = await client.publish_event("order.paid", paid, event_id=f"{tag}-pay-2")
    assert fresh.woken_run_ids == (second.run_id,)
    assert await asyncio.wait_for(second.result(), RESULT_TIMEOUT) == {"order": 7, "paid": 30}


async def test_an_event_wait_times_out(
    server: Server, worker: object, client: Client, tag: str
) -> None:
    started = time.monotonic()
    handle = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7, seconds=1.0))

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"timed_out": "event:1"}
    assert time.monotonic() - started >= 1.0
    assert await met_waits(client, handle.run_id) == ["event:1:timeout"]
    late = await client.publish_event("order.paid", {"order": 7, "amount": 30})
    assert late.woken_run_ids == ()


# -- when the wait begins -----------------------------------------------------------------


async def test_an_event_published_before_the_wait_began_is_not_delivered(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    name = f"ping-{tag}"
    await client.publish_event(name, {"n": 0})  # before the run exists
    handle = await client.trigger(wf.await_event, wf.Listening(tag=tag, name=name, hold="before"))
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the held step")
    early = await client.publish_event(name, {"n": 1})  # the run runs, the wait is ahead
    assert early.woken_run_ids == ()
    release(marks, tag)
    await stays_suspended(client, handle.run_id)

    later = await client.publish_event(name, {"n": 2})
    assert later.woken_run_ids == (handle.run_id,)
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"n": 2}


async def test_an_event_published_while_the_run_still_runs_is_delivered(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    name = f"ping-{tag}"
    handle = await client.trigger(wf.await_event, wf.Listening(tag=tag, name=name, hold="during"))
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the held step")
    # The wait began with the gather; the run has not suspended yet (the step runs).
    during = await client.publish_event(name, {"n": 1})
    assert during.woken_run_ids == ()
    release(marks, tag)

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"n": 1}
    assert await met_waits(client, handle.run_id) == ["event:1"]
    assert read_marks(marks, tag) == ["hold:start", "hold:end", "after"]


async def test_a_kept_event_wait_keeps_its_start_across_a_replay(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    # Round 1: the run suspends on event:1 and sleep:1. The timer wins while no worker
    # runs, which abandons event:1; the event is published then. The replay calls the
    # wait again later than the event, but the server kept event:1's first start, so
    # the suspension of round 2 finds the event and the run wakes at once.
    name = f"ping-{tag}"
    first_worker = stack.start_worker(server)
    handle = await client.trigger(wf.event_reminders, wf.Awaiting(tag=tag, name=name, seconds=1))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    assert first_worker.stop() == 0
    await wait_for_status(client, handle.run_id, RunStatus.PENDING)  # sleep:1 was met
    between = await client.publish_event(name, {"n": 1})
    assert between.woken_run_ids == ()
    stack.start_worker(server)

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == {"reminders": 1, "event": {"n": 1}}
    assert await met_waits(client, handle.run_id) == ["sleep:1", "event:1"]


async def test_a_killed_worker_does_not_move_the_start_of_an_event_wait(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    # The wait begins with the gather, beside a step that blocks; its start is recorded
    # (event:1:since) before the run ever suspends. The worker dies during the step and
    # the event is published before another worker replays the run: the replay reads
    # the recorded start back, which is earlier than the event, so the run gets it.
    name = f"ping-{tag}"
    doomed = stack.start_worker(server)
    handle = await client.trigger(wf.await_event, wf.Listening(tag=tag, name=name, hold="during"))
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the held step")
    await recorded(client, handle.run_id, "event:1:since")
    assert doomed.kill() == -signal.SIGKILL

    published = await client.publish_event(name, {"n": 1})
    assert published.woken_run_ids == ()  # no suspension named the wait yet
    release(marks, tag)
    stack.start_worker(server)

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"n": 1}
    assert await met_waits(client, handle.run_id) == ["event:1"]
    lines = read_marks(marks, tag)
    assert lines.count("hold:start") == 2, lines  # interrupted once, then run again
    steps = [e.key for e in await history(client, handle.run_id) if e.type is STEP_COMPLETED]
    assert steps.count("event:1:since") == 1, steps  # the replay read it, not re-recorded


async def recorded(client: Client, run_id: str, key: str) -> None:
    """Wait until the run's history holds a completed step ``key``."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        events = await history(client, run_id)
        if any(e.type is STEP_COMPLETED and e.key == key for e in events):
            return
        assert time.monotonic() < deadline, f"{key} was never recorded"
        await asyncio.sleep(0.02)


# -- grpcurl ------------------------------------------------------------------------------


async def test_publish_event_with_grpcurl(
    server: Server, worker: object, client: Client, tag: str
) -> None:
    # As docs/operations.md shows it.
    handle = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=7))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    request = {
        "name": "order.paid",
        "payload": {"json": '{"order": 7, "amount": 30}'},
        "event_id": f"pay-{tag}",
    }

    published = await asyncio.to_thread(call, server, "PublishEvent", request)
    again = await asyncio.to_thread(call, server, "PublishEvent", request)

    assert published == {"event_id": f"pay-{tag}", "woken_run_ids": [handle.run_id]}
    assert again == {"event_id": f"pay-{tag}", "already_published": True}
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"order": 7, "paid": 30}
