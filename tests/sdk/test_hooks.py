"""Hooks in the replay engine (no gRPC): keys, tokens derived from the run's secret,
the hook wait condition, payloads, timeouts and first-of."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import pytest
from pydantic import BaseModel

from stepd import Hook, WorkflowContext, step, workflow
from stepd._phase import RunOutcome
from stepd._replay import RunExecutor
from stepd.errors import WaitTimeoutError

from .conftest import HOOK_SECRET, FakeChannel, make_task

tokens: list[str] = []
calls: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    tokens.clear()
    calls.clear()


def documented_token(secret: bytes, run_id: str, wait_key: str) -> str:
    """The token as docs/protocol.md derives it, computed here independently."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    mac = hmac.new(secret, wait_key.encode(), hashlib.sha256).digest()[:16]
    return f"h1.{b64(run_id.encode())}.{b64(wait_key.encode())}.{b64(mac)}"


@step
async def send_link(token: str) -> str:
    tokens.append(token)
    return "sent"


@step
async def note(label: str) -> str:
    calls.append(label)
    return label


async def run(wf: Any, channel: FakeChannel, **task: Any) -> RunOutcome:
    executor = RunExecutor(wf, make_task(wf.name, wf.version, **task), channel)
    return await asyncio.wait_for(executor.execute(), 5)


def conditions(channel: FakeChannel) -> list[dict[str, str]]:
    """Each suspend_run sent: the kind of each wait's condition, by wait key in order."""
    return [
        {w.wait_key: str(w.WhichOneof("condition")) for w in c.suspend_run.waits}
        for c in channel.commands
        if c.HasField("suspend_run")
    ]


# -- keys and tokens -----------------------------------------------------------------------


@workflow
async def two_hooks(ctx: WorkflowContext) -> list[Any]:
    first = ctx.create_hook()
    await ctx.sleep(0)  # sleeps, signals and events count apart from hooks
    second = ctx.create_hook()
    await send_link(first.token)
    await send_link(second.token)
    return list(await asyncio.gather(ctx.wait_for_hook(first), ctx.wait_for_hook(second)))


async def test_keys_and_tokens_follow_the_documented_derivation(channel: FakeChannel) -> None:
    assert await run(two_hooks, channel, run_id="run-7") is RunOutcome.SUSPENDED
    assert tokens == [
        documented_token(HOOK_SECRET, "run-7", "hook:1"),
        documented_token(HOOK_SECRET, "run-7", "hook:2"),
    ]
    assert conditions(channel) == [{"hook:1": "hook", "hook:2": "hook"}]


async def test_a_replay_makes_the_same_tokens_without_a_round_trip() -> None:
    first, replay = FakeChannel(), FakeChannel()
    assert await run(two_hooks, first) is RunOutcome.SUSPENDED
    journal = {"send_link": "sent", "send_link#2": "sent"}
    outcome = await run(two_hooks, replay, journal=journal, met=[("hook:2", "b")])
    assert outcome is RunOutcome.SUSPENDED
    assert replay.kinds() == ["suspend_run"]  # nothing asked of the server for the tokens
    assert conditions(replay) == [{"hook:1": "hook"}]

    seen: list[Hook] = []

    @workflow(name="peek")
    async def peek(ctx: WorkflowContext) -> None:
        seen.extend([ctx.create_hook(), ctx.create_hook()])

    for _ in range(2):
        assert await run(peek, FakeChannel(), run_id="run-7") is RunOutcome.COMPLETED
    assert seen[:2] == seen[2:]
    assert [(h.key, h.run_id) for h in seen[:2]] == [("hook:1", "run-7"), ("hook:2", "run-7")]
    assert seen[0].token not in repr(seen[0])  # a bearer secret stays out of logs


async def test_another_secret_makes_other_tokens(channel: FakeChannel) -> None:
    assert await run(two_hooks, channel, hook_secret=b"\x07" * 32) is RunOutcome.SUSPENDED
    assert tokens[0] == documented_token(b"\x07" * 32, "run-1", "hook:1")
    assert tokens[0] != documented_token(HOOK_SECRET, "run-1", "hook:1")


async def test_a_run_without_a_hook_secret_fails_at_create_hook(channel: FakeChannel) -> None:
    assert await run(two_hooks, channel, hook_secret=b"") is RunOutcome.FAILED
    assert "no hook secret" in channel.final().fail_run.error.message


# -- waiting -------------------------------------------------------------------------------


class Decision(BaseModel):
    approved: bool
    by: str


@workflow
async def approval(ctx: WorkflowContext) -> str:
    hook = ctx.create_hook()
    await send_link(hook.token)
    try:
        decision = await ctx.wait_for_hook(hook, timeout=3600, type=Decision)
    except WaitTimeoutError as exc:
        return await note(f"timed out: {exc.wait_key} {exc.timeout}")
    return await note(f"{decision.approved} by {decision.by}")


async def test_the_first_execution_suspends_on_the_hook_and_its_timer(
    channel: FakeChannel,
) -> None:
    assert await run(approval, channel) is RunOutcome.SUSPENDED
    assert channel.kinds() == ["record_step", "suspend_run"]
    assert conditions(channel) == [{"hook:1": "hook", "hook:1:timeout": "timer"}]


async def test_an_executed_hook_returns_its_typed_payload(channel: FakeChannel) -> None:
    met = [("hook:1", {"approved": True, "by": "ada"})]
    outcome = await run(approval, channel, journal={"send_link": "sent"}, met=met)
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["True by ada"]


async def test_the_timeout_branch_on_replay(channel: FakeChannel) -> None:
    met = ["hook:1:timeout"]
    outcome = await run(approval, channel, journal={"send_link": "sent"}, met=met)
    assert outcome is RunOutcome.COMPLETED
    assert calls == ["timed out: hook:1 3600.0"]


@workflow
async def hook_or_signal(ctx: WorkflowContext) -> Any:
    hook = ctx.create_hook()
    return await ctx.first(ctx.wait_for_hook(hook), ctx.wait_for_signal("cancel"))


async def test_first_of_a_hook_and_a_signal(channel: FakeChannel) -> None:
    assert await run(hook_or_signal, channel) is RunOutcome.SUSPENDED
    assert conditions(channel) == [{"hook:1": "hook", "signal:1": "signal"}]
    done = FakeChannel()
    assert await run(hook_or_signal, done, met=[("hook:1", "yes")]) is RunOutcome.COMPLETED
    assert done.final().complete_run.result.json == '[0,"yes"]'


async def test_a_hook_is_waited_on_once(channel: FakeChannel) -> None:
    @workflow(name="twice")
    async def twice(ctx: WorkflowContext) -> Any:
        hook = ctx.create_hook()
        await ctx.wait_for_hook(hook)
        return await ctx.wait_for_hook(hook)

    assert await run(twice, channel, met=[("hook:1", 1)]) is RunOutcome.FAILED
    error = channel.final().fail_run.error
    assert error.type == "stepd.errors.WorkflowContextError"
    assert "hook:1 was waited on already" in error.message


async def test_a_hook_of_another_run_is_refused(channel: FakeChannel) -> None:
    other = WorkflowContext("other-run", "wf", "1").create_hook()

    @workflow(name="foreign")
    async def foreign(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for_hook(other)

    assert await run(foreign, channel) is RunOutcome.FAILED
    assert "belongs to run other-run" in channel.final().fail_run.error.message


async def test_create_hook_inside_a_step_body_raises(channel: FakeChannel) -> None:
    @workflow(name="in_step")
    async def in_step(ctx: WorkflowContext) -> Any:
        @ctx.step
        async def inner() -> str:
            return ctx.create_hook().token

        return await inner()

    assert await run(in_step, channel) is RunOutcome.FAILED
    assert channel.final().fail_run.error.type == "stepd.errors.WorkflowContextError"


async def test_a_context_made_by_hand_makes_hooks_that_nothing_executes() -> None:
    ctx = WorkflowContext("r", "wf", "1")
    first, second = ctx.create_hook(), ctx.create_hook()
    assert (first.key, second.key) == ("hook:1", "hook:2")
    assert first.token == documented_token(b"", "r", "hook:1")
    with pytest.raises(WaitTimeoutError, match="hook:1") as caught:
        await ctx.wait_for_hook(first, timeout=0.01)
    assert caught.value.wait_key == "hook:1"
    with pytest.raises(TypeError):
        _ = ctx.wait_for_hook("h1.token")  # type: ignore[call-overload]
