"""Crashes: a SIGKILLed worker, a restarted server. Nothing acknowledged is lost."""

import asyncio
import signal
from pathlib import Path

from stepd import Client, RunStatus
from tests.e2e import workflows as wf
from tests.e2e.harness import Server, Stack, eventually, read_marks, release

RESULT_TIMEOUT = 30


async def test_killed_worker_resumes_on_a_new_worker_without_rerunning_steps(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    doomed = stack.start_worker(server)
    handle = await client.trigger(wf.crash_resume, wf.Job(tag=tag))
    # "hold" starts only after "first" was recorded (acknowledged by the server).
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the blocking step")

    assert doomed.kill() == -signal.SIGKILL
    stack.start_worker(server)
    release(marks, tag)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    assert result == f"first-{tag}+hold+after"
    lines = read_marks(marks, tag)
    assert lines.count("first") == 1, lines
    assert lines.count("hold:start") == 2, lines  # interrupted once, then run again
    assert lines.count("after") == 1, lines
    info = await client.get_run(handle.run_id)
    assert info.status is RunStatus.COMPLETED
    assert info.dispatch_count == 2


async def test_replay_reraises_a_recorded_step_error_without_running_the_step(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    doomed = stack.start_worker(server)
    handle = await client.trigger(wf.replay_error, wf.Job(tag=tag))
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the blocking step")

    doomed.kill()
    stack.start_worker(server)
    release(marks, tag)
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    # The replayed error has the same type and message as the original.
    assert result == f"tests.e2e.workflows.FlakyError: flaky failure for {tag}"
    assert read_marks(marks, tag).count("always_fails") == 1


async def test_a_crashed_server_loses_nothing_it_acknowledged(
    stack: Stack, database: str, marks: Path, tag: str
) -> None:
    # On PostgreSQL the restarted server takes the crashed one's runs when their
    # leases expire (it cannot tell a crashed server from a live replica): keep it short.
    lease = ("--lease-timeout", "3")
    server = stack.start_server(database, args=lease)
    stack.start_worker(server)  # it reconnects to the same address after the crash
    async with Client(server.address) as client:
        handle = await client.trigger(wf.crash_resume, wf.Job(tag=tag))
        queued = await client.trigger(wf.sequential, wf.Job(tag=f"{tag}-later", value=2))
        await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the blocking step")

    assert server.process.kill() == -signal.SIGKILL  # no graceful shutdown
    again = stack.start_server(server.database, address=server.address, args=lease)
    release(marks, tag)
    async with Client(again.address) as client:
        resumed = client.get_handle(handle.run_id, wf.crash_resume)
        result = await asyncio.wait_for(resumed.result(), RESULT_TIMEOUT)
        later = await asyncio.wait_for(
            client.get_handle(queued.run_id, wf.sequential).result(), RESULT_TIMEOUT
        )

    assert result == f"first-{tag}+hold+after"
    assert later == "2 -> 3 -> 6"
    assert read_marks(marks, tag).count("first") == 1


async def test_runs_survive_a_server_restart(
    stack: Stack, server: Server, marks: Path, tag: str
) -> None:
    stack.start_worker(server)
    async with Client(server.address) as client:
        done = await client.execute(wf.sequential, wf.Job(tag=tag, value=1))
        assert done == "1 -> 2 -> 4"
        completed = await client.trigger(wf.square_workflow, 3)
        await asyncio.wait_for(completed.result(), RESULT_TIMEOUT)

    for process in reversed(stack.processes):  # the worker, then the server
        assert process.stop() == 0, f"{process.name} did not exit cleanly on SIGTERM"

    # A run triggered while no worker is up, then a full restart.
    restarted = stack.start_server(server.database)
    async with Client(restarted.address) as client:
        pending = await client.trigger(wf.square_workflow, 4)
    stopped = restarted.process.stop()
    assert stopped == 0

    again = stack.start_server(server.database)
    stack.start_worker(again)
    async with Client(again.address) as client:
        before = await client.get_run(completed.run_id)
        assert before.status is RunStatus.COMPLETED
        assert before.result == 9
        assert await asyncio.wait_for(client.get_run(pending.run_id), 5) is not None
        assert (
            await asyncio.wait_for(
                (await client.trigger(wf.square_workflow, 5)).result(), RESULT_TIMEOUT
            )
            == 25
        )
        await eventually_completed(client, pending.run_id)
        assert (await client.get_run(pending.run_id)).result == 16
    assert read_marks(marks, tag) == ["add_one", "double", "describe"]


async def eventually_completed(client: Client, run_id: str) -> None:
    """Wait until a run reaches COMPLETED."""
    for _ in range(RESULT_TIMEOUT * 10):
        info = await client.get_run(run_id)
        if info.status is RunStatus.COMPLETED:
            return
        assert info.status not in (RunStatus.FAILED, RunStatus.CANCELLED), info
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not complete")
