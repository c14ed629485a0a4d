"""Event triggers through a real server and worker: ``@workflow(events=[...])`` and
``Client.publish_event`` start one run per subscribed workflow per event id."""

import asyncio
from pathlib import Path

from stepd import Client, NotFoundError
from tests.e2e import start_workflows as sw
from tests.e2e.harness import Server, Stack, read_marks
from tests.e2e.test_signals import RESULT_TIMEOUT

STARTS = ("tests.e2e.start_workflows",)
SCHEDULED = ("tests.e2e.scheduled_workflows",)


async def serve_starts(stack: Stack, server: Server, client: Client) -> None:
    """Start a worker serving the event-triggered workflows, and wait until the server
    has its hello (a run it executes proves that: the hello is stored first)."""
    stack.start_worker(server, STARTS)
    probe = await client.trigger(sw.welcome, sw.Signup(tag="probe", user="probe"))
    await asyncio.wait_for(probe.result(), RESULT_TIMEOUT)


async def results(client: Client, run_ids: tuple[str, ...]) -> dict[str, object]:
    """Each run's workflow name and result."""
    out = {}
    for run_id in run_ids:
        await asyncio.wait_for(client.get_handle(run_id).result(), RESULT_TIMEOUT)
        info = await client.get_run(run_id)
        out[info.workflow_name] = info.result
    return out


async def test_an_event_starts_each_subscribed_workflow_once(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    await serve_starts(stack, server, client)
    payload = sw.Signup(tag=tag, user="ada")

    published = await client.publish_event(sw.SIGNED_UP, payload, event_id=f"signup-{tag}")

    assert not published.already_published and published.woken_run_ids == ()
    assert len(published.started_run_ids) == 2
    assert await results(client, published.started_run_ids) == {
        "e2e.welcome": "welcome ada",
        "e2e.audit_signup": "audited ada",
    }
    for run_id in published.started_run_ids:
        info = await client.get_run(run_id)
        assert info.input == {"tag": tag, "user": "ada"}  # the event's payload
    assert sorted(read_marks(marks, tag)) == ["audit:ada", "welcome:ada"]

    # Only the workflows that declare an event start on it.
    renamed = await client.publish_event("e2e.user.renamed", sw.Signup(tag=tag, user="bob"))
    assert await results(client, renamed.started_run_ids) == {"e2e.audit_signup": "audited bob"}
    nobody = await client.publish_event("e2e.user.left", {"tag": tag})
    assert nobody.started_run_ids == ()


async def test_a_duplicate_event_id_starts_nothing_new(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    await serve_starts(stack, server, client)
    payload = sw.Signup(tag=tag, user="eve")
    event_id = f"dup-{tag}"

    # Sent at once (a client retrying in parallel), then again later.
    first = await asyncio.gather(
        *(client.publish_event(sw.SIGNED_UP, payload, event_id=event_id) for _ in range(5))
    )
    started = [run_id for p in first for run_id in p.started_run_ids]
    assert len(started) == 2 and len(set(started)) == 2
    assert sum(not p.already_published for p in first) == 1
    await results(client, tuple(started))
    again = await client.publish_event(sw.SIGNED_UP, payload, event_id=event_id)
    assert again.already_published and again.started_run_ids == ()

    runs = [r async for r in client.list_runs(workflow="e2e.welcome", payloads=True)]
    assert [r.run_id for r in runs if r.input == payload.model_dump()] == [
        r for r in started if (await client.get_run(r)).workflow_name == "e2e.welcome"
    ]
    assert sorted(read_marks(marks, tag)) == ["audit:eve", "welcome:eve"]
    # A new id is a new event: it starts both workflows again.
    fresh = await client.publish_event(sw.SIGNED_UP, payload, event_id=f"{event_id}-2")
    assert len(fresh.started_run_ids) == 2
    await results(client, fresh.started_run_ids)


async def test_a_declared_schedule_is_registered_by_the_worker(
    stack: Stack, server: Server, client: Client
) -> None:
    stack.start_worker(server, SCHEDULED)

    async def scheduled_runs() -> list[str]:
        try:
            info = await client.get_schedule("e2e.heartbeat", recent_runs=100)
        except NotFoundError:
            return []  # the worker's hello is not stored yet
        return [r.run_id for r in info.recent_runs]

    deadline = asyncio.get_running_loop().time() + RESULT_TIMEOUT
    while len(await scheduled_runs()) < 2:
        assert asyncio.get_running_loop().time() < deadline, "the declared schedule never fired"
        await asyncio.sleep(0.1)
    info = await client.get_schedule("e2e.heartbeat")
    assert (info.origin, info.cron, info.time_zone, info.input) == (
        "workflow",
        "* * * * * *",
        "Europe/Paris",
        {"note": "beat"},
    )
    run = await client.get_run(info.recent_runs[-1].run_id)
    assert run.schedule_id == "e2e.heartbeat" and run.schedule_time is not None
    assert await client.get_handle(run.run_id).result(timeout=RESULT_TIMEOUT) == "beat"

    # A pause survives the workflow being declared again by a worker's hello (to a
    # restarted server, which stores the declaration anew).
    await client.pause_schedule("e2e.heartbeat")
    assert server.process.stop() == 0
    again = stack.start_server(server.database, address=server.address)
    async with Client(again.address) as fresh:
        probe = await fresh.trigger("e2e.heartbeat", {"note": "probe"})
        assert await probe.result(timeout=RESULT_TIMEOUT) == "probe"  # the hello was stored
        assert (await fresh.get_schedule("e2e.heartbeat")).paused
        before = await scheduled_runs()
        await asyncio.sleep(1.5)
        assert await scheduled_runs() == before
