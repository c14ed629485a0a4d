"""Signals, waiting on several things, and run history through a real server and real
worker processes."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examples.expense_approval import Decision, Expense, expense_approval
from stepd import Client, NotFoundError, RunStatus
from stepd.errors import FailedPreconditionError, InvalidArgumentError
from stepd.history import RunEvent, RunEventType
from tests.e2e import workflows as wf
from tests.e2e.harness import ROOT, Server, Stack, eventually, read_marks, release

RESULT_TIMEOUT = 30


async def wait_for_status(client: Client, run_id: str, status: RunStatus) -> None:
    """Poll until the run is in ``status``."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while (info := await client.get_run(run_id)).status is not status:
        assert time.monotonic() < deadline, f"run {run_id} never {status}: {info}"
        await asyncio.sleep(0.02)


async def history(client: Client, run_id: str) -> list[RunEvent]:
    return [event async for event in client.list_run_events(run_id)]


async def met_waits(client: Client, run_id: str) -> list[str | None]:
    return [e.key for e in await history(client, run_id) if e.type is RunEventType.WAIT_MET]


# -- one signal ---------------------------------------------------------------------------


async def test_a_signal_sent_after_the_wait_resumes_the_run(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    assert read_marks(marks, tag) == ["before"]

    await client.signal(handle.run_id, "go", {"approved": True, "by": "ada"})
    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    assert result == {"approved": True, "by": "ada"}
    assert read_marks(marks, tag) == ["before", "after"]  # the first step did not run again
    assert (await client.get_run(handle.run_id)).dispatch_count == 2


async def test_a_signal_sent_before_the_wait_is_buffered(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag, hold=True))
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the held step")
    await client.signal(handle.run_id, "go", "early")  # the run is busy in a step
    release(marks, tag)

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == "early"
    assert read_marks(marks, tag) == ["before", "hold:start", "hold:end", "after"]


async def test_a_signal_sent_before_the_run_started_is_buffered(
    stack: Stack, server: Server, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag))
    await client.signal(handle.run_id, "go", 42)  # no worker yet: the run is pending
    await client.signal(handle.run_id, "other", 0)  # another name: not for this wait
    stack.start_worker(server)

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == 42


async def test_two_signals_are_delivered_in_order_one_per_wait(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.two_signals, wf.Awaiting(tag=tag, name="item"))
    # Sent together, maybe before the first wait: each wait takes the oldest one left.
    # The same request id twice stores one signal.
    await client.signal(handle.run_id, "item", "a", request_id=f"{tag}-1")
    await client.signal(handle.run_id, "item", "a again", request_id=f"{tag}-1")
    await client.signal(handle.run_id, "item", "b", request_id=f"{tag}-2")

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == ["a", "b"]
    received = [
        e.payload
        for e in await history(client, handle.run_id)
        if e.type is RunEventType.SIGNAL_RECEIVED
    ]
    assert received == ["a", "b"]


async def test_a_signal_wait_times_out_and_a_later_signal_serves_the_next_wait(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    started = time.monotonic()
    handle = await client.trigger(wf.signal_timeout, wf.Awaiting(tag=tag, seconds=1.0))
    await eventually(lambda: read_marks(marks, tag) == ["timed out"], what="the timeout")
    assert time.monotonic() - started >= 1.0
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    await client.signal(handle.run_id, "go", "late")

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == {"timed_out": "signal:1", "then": "late"}
    assert await met_waits(client, handle.run_id) == ["signal:1:timeout", "signal:2"]


async def test_a_signal_in_time_beats_its_timeout(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.signal_timeout, wf.Awaiting(tag=tag, seconds=30.0))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    await client.signal(handle.run_id, "go", "in time")

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"got": "in time"}
    assert await met_waits(client, handle.run_id) == ["signal:1"]


# -- a sleep or a signal, whichever comes first -------------------------------------------


async def test_sleep_or_signal_when_the_signal_comes_first(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.sleep_or_signal, wf.Awaiting(tag=tag, seconds=60.0))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    started = time.monotonic()
    await client.signal(handle.run_id, "go", "now")

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == {"winner": "signal", "value": "now"}
    assert time.monotonic() - started < 30  # the 60 s sleep did not matter
    assert await met_waits(client, handle.run_id) == ["signal:1"]


async def test_sleep_or_signal_when_the_sleep_comes_first(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.sleep_or_signal, wf.Awaiting(tag=tag, seconds=1.0))
    await eventually(lambda: read_marks(marks, tag) == ["slept"], what="the sleep to win")
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    # The losing signal wait was abandoned: this signal goes to the next wait.
    await client.signal(handle.run_id, "go", "late")

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == {"winner": "sleep", "later": "late"}
    assert await met_waits(client, handle.run_id) == ["sleep:1", "signal:2"]
    suspensions = [
        e.detail for e in await history(client, handle.run_id) if e.type is RunEventType.SUSPENDED
    ]
    assert len(suspensions) == 2
    assert "sleep:1" in str(suspensions[0]) and "signal:1" in str(suspensions[0])
    assert "signal:2" in str(suspensions[1]) and "signal:1" not in str(suspensions[1])


async def test_a_kept_signal_wait_outlasts_several_timers(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    """asyncio.wait keeps the losing signal wait: each suspension sends it again (the
    server reopens it) beside a new timer, until the signal comes."""
    handle = await client.trigger(wf.reminders, wf.Awaiting(tag=tag, seconds=0.5))
    await eventually(lambda: len(read_marks(marks, tag)) >= 2, what="two reminders")
    await client.signal(handle.run_id, "go", "ok")

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result["signal"] == "ok" and result["reminders"] >= 2
    count = result["reminders"]
    assert read_marks(marks, tag) == [f"reminder {i}" for i in range(1, count + 1)]
    met = await met_waits(client, handle.run_id)
    assert met == [*(f"sleep:{i}" for i in range(1, count + 1)), "signal:1"]


async def test_a_signal_wait_survives_a_server_restart(
    stack: Stack, server: Server, marks: Path, tag: str
) -> None:
    stack.start_worker(server)  # it reconnects to the same address after the restart
    async with Client(server.address) as client:
        handle = await client.trigger(wf.signal_timeout, wf.Awaiting(tag=tag, seconds=60))
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    assert server.process.kill() == -signal.SIGKILL

    again = stack.start_server(server.database, address=server.address)
    async with Client(again.address) as client:
        assert (await client.get_run(handle.run_id)).status is RunStatus.SUSPENDED
        await client.signal(handle.run_id, "go", "after the restart")
        resumed = client.get_handle(handle.run_id, wf.signal_timeout)
        result = await asyncio.wait_for(resumed.result(), RESULT_TIMEOUT)
    assert result == {"got": "after the restart"}


# -- bad signals ----------------------------------------------------------------------------


async def test_signal_errors(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.await_signal, wf.Awaiting(tag=tag))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    with pytest.raises(InvalidArgumentError):
        await client.signal(handle.run_id, "")
    await client.signal(handle.run_id, "go", "done")
    await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)

    with pytest.raises(FailedPreconditionError):
        await client.signal(handle.run_id, "go", "too late")
    with pytest.raises(NotFoundError, match="no-such-run"):
        await client.signal("no-such-run", "go")
    with pytest.raises(NotFoundError, match="no-such-run"):
        await history(client, "no-such-run")


# -- history --------------------------------------------------------------------------------


async def test_list_run_events_shows_the_history_of_a_run(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.chronicle, wf.Awaiting(tag=tag))
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    await client.signal(handle.run_id, "go", {"n": 1})
    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == "finished with {'n': 1}"

    events = await history(client, handle.run_id)
    T = RunEventType
    assert [e.type for e in events] == [
        T.TRIGGERED,
        T.DISPATCHED,
        T.STEP_COMPLETED,
        T.CUSTOM,  # written once, although the replay after the wake-up sent it again
        T.SUSPENDED,
        T.SIGNAL_RECEIVED,
        T.WAIT_MET,
        T.DISPATCHED,
        T.STEP_COMPLETED,
        T.COMPLETED,
    ]
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert all(e.time is not None for e in events)
    _, dispatched, prepared, custom, suspended, signal, met, _, finished, completed = events
    assert dispatched.detail and dispatched.attempt > 0
    assert (prepared.key, prepared.payload, prepared.attempt) == ("prepare", "ready", 1)
    assert (custom.key, custom.name, custom.payload) == (
        "entry:1",
        "log",
        {"message": "waiting for a signal", "state": "ready", "signal": "go"},
    )
    assert "signal:1" in str(suspended.detail)
    assert (signal.name, signal.payload) == ("go", {"n": 1})
    assert met.key == "signal:1"
    assert finished.key == "finish"
    assert completed.payload == "finished with {'n': 1}"
    assert read_marks(marks, tag) == ["prepare", "finish"]

    paged = [e async for e in client.list_run_events(handle.run_id, page_size=3)]
    assert paged == events


# -- the expense approval example -----------------------------------------------------------


async def test_expense_approval_example(stack: Stack, server: Server, client: Client) -> None:
    stack.start_worker(server, ["examples.expense_approval"])

    def expense(expense_id: str, amount: float, **changes: float) -> Expense:
        return Expense(
            expense_id=expense_id, employee="ada", amount=amount, description="trip", **changes
        )

    big = await client.trigger(expense_approval, expense("big", 1800))
    small = await client.trigger(expense_approval, expense("small", 120))
    rejected = await client.trigger(expense_approval, expense("rejected", 5000))
    vp_rejected = await client.trigger(expense_approval, expense("vp-no", 5000))
    manager_late = await client.trigger(expense_approval, expense("late", 50, manager_timeout=1))
    vp_late = await client.trigger(expense_approval, expense("vp-late", 2000, vp_timeout=1))

    yes = Decision(approved=True, by="grace")
    await big.signal("manager_decision", yes)
    await big.signal("vp_decision", Decision(approved=True, by="linus"))
    await small.signal("manager_decision", yes)
    await rejected.signal("manager_decision", Decision(approved=False, by="grace", comment="no"))
    await vp_rejected.signal("manager_decision", yes)
    await vp_rejected.signal("vp_decision", Decision(approved=False, by="linus"))
    await vp_late.signal("manager_decision", yes)

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(h.result() for h in (big, small, rejected, vp_rejected, manager_late, vp_late))
        ),
        RESULT_TIMEOUT,
    )
    summary = [(o.status, o.approved_by, o.payout_id is not None) for o in outcomes]
    assert summary == [
        ("paid", ["grace", "linus"], True),
        ("paid", ["grace"], True),
        ("rejected", [], False),
        ("rejected", ["grace"], False),
        ("timed_out", [], False),
        ("timed_out", ["grace"], False),
    ]
    assert outcomes[2].message == "rejected by grace (manager): no"
    assert outcomes[4].message == "no decision from the manager within 1 s"
    assert outcomes[5].message == "no decision from the vp within 1 s"

    logs = [
        e.payload["message"]
        for e in await history(client, big.run_id)
        if e.type is RunEventType.CUSTOM
    ]
    assert logs == [
        "waiting for the manager",
        "the manager decided",
        "waiting for the vp",
        "the vp decided",
    ]


def test_expense_approval_example_runs_as_a_script(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "examples/expense_approval.py"],
        cwd=ROOT,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "paid - approved by grace, linus and paid",
        "  log: waiting for the manager",
        "  log: the manager decided",
        "  log: waiting for the vp",
        "  log: the vp decided",
    ]
