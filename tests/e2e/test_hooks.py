"""Hooks through a real server and real worker processes: ``ctx.create_hook``,
``ctx.wait_for_hook`` and ``Client.execute_hook``."""

import asyncio
import time
from pathlib import Path

import pytest

from stepd import Client, RunStatus
from stepd.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tests.e2e import workflows as wf
from tests.e2e.harness import Server, eventually, read_marks, release
from tests.e2e.test_signals import RESULT_TIMEOUT, met_waits, wait_for_status


async def token_of(marks: Path, tag: str) -> str:
    """The token the run's ``send_approval_email`` step handed out."""
    path = marks / f"{tag}.token"
    await eventually(path.exists, what="the approval email")
    return path.read_text()


async def test_an_executed_hook_resumes_the_run_with_its_payload(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.approval, wf.Approval(tag=tag))
    token = await token_of(marks, tag)
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    assert await client.execute_hook(token, {"approved": True, "by": "ada"}) == handle.run_id

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    # The replay after the wake-up made the same token again, with no round trip.
    assert result == {"decision": {"approved": True, "by": "ada"}, "token": token}
    assert await met_waits(client, handle.run_id) == ["hook:1"]
    assert read_marks(marks, tag) == ["email"]  # the step ran once
    with pytest.raises(FailedPreconditionError, match="already executed"):
        await client.execute_hook(token, "again")


async def test_unknown_and_forged_tokens_are_not_found(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    handle = await client.trigger(wf.approval, wf.Approval(tag=tag))
    token = await token_of(marks, tag)
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)
    prefix, run_part, _, mac = token.split(".")
    other_key = "aG9vazoy"  # base64url("hook:2"): the MAC no longer fits
    forged = [
        f"{prefix}.{run_part}.{other_key}.{mac}",
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "h1.bm8.bm8.bm8",
        "not-a-token",
    ]
    for bad in forged:
        with pytest.raises(NotFoundError, match="no hook has this token"):
            await client.execute_hook(bad, "x")
    with pytest.raises(InvalidArgumentError):
        await client.execute_hook("", "x")

    info = await client.get_run(handle.run_id)
    assert (info.status, info.dispatch_count) == (RunStatus.SUSPENDED, 1)  # nothing woke it
    await client.execute_hook(token, "real")
    assert (await asyncio.wait_for(handle.result(), RESULT_TIMEOUT))["decision"] == "real"


async def test_an_expired_hook_takes_the_timeout_branch_and_refuses_later_executions(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    started = time.monotonic()
    handle = await client.trigger(wf.approval, wf.Approval(tag=tag, seconds=1.0))
    token = await token_of(marks, tag)

    assert await asyncio.wait_for(handle.result(), RESULT_TIMEOUT) == {"timed_out": "hook:1"}
    assert time.monotonic() - started >= 1.0
    assert await met_waits(client, handle.run_id) == ["hook:1:timeout"]
    with pytest.raises(FailedPreconditionError, match="expired"):
        await client.execute_hook(token, {"approved": True})


async def test_an_execution_before_the_run_waits_is_delivered(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    # The hook is made and handed out, then a slow step runs before the wait: the
    # execution that comes meanwhile is kept until the run waits on the hook.
    handle = await client.trigger(wf.approval, wf.Approval(tag=tag, slow=True))
    token = await token_of(marks, tag)
    await eventually(lambda: "hold:start" in read_marks(marks, tag), what="the slow step")

    assert await client.execute_hook(token, "early") == handle.run_id
    with pytest.raises(FailedPreconditionError, match="already executed"):
        await client.execute_hook(token, "twice")
    release(marks, tag)

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == {"decision": "early", "token": token}
    assert await met_waits(client, handle.run_id) == ["hook:1"]
    assert read_marks(marks, tag) == ["email", "hold:start", "hold:end"]
