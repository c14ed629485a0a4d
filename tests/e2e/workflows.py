"""Workflows the end-to-end tests run in real worker processes.

Served by ``stepd-worker tests.e2e.workflows``. Steps record each execution
as a line in ``$STEPD_E2E_MARKS/<tag>.log``, so a test can count how often a
step body really ran. Blocking steps wait for ``<tag>.release`` in that
directory.
"""

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from stepd.errors import WaitTimeoutError

MARKS_ENV = "STEPD_E2E_MARKS"
BLOCK_TIMEOUT = 60.0


def marks_dir() -> Path:
    """The side-effect directory given by the test harness."""
    return Path(os.environ[MARKS_ENV])


def mark(tag: str, event: str) -> None:
    """Append one line for ``tag``: proof that a step body ran."""
    with (marks_dir() / f"{tag}.log").open("a") as file:
        file.write(event + "\n")


def _marked(tag: str) -> list[str]:
    path = marks_dir() / f"{tag}.log"
    return path.read_text().splitlines() if path.exists() else []


def _released(tag: str) -> bool:
    return (marks_dir() / f"{tag}.release").exists()


async def wait_until_released(tag: str) -> None:
    """Poll for the release file; give up after BLOCK_TIMEOUT seconds."""
    deadline = time.monotonic() + BLOCK_TIMEOUT
    while not _released(tag):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag} was never released")
        await asyncio.sleep(0.02)


class Job(BaseModel):
    """Input of most test workflows."""

    tag: str
    value: int = 0


class PaymentDeclinedError(Exception):
    """Raised by the simulated payment step."""


class FlakyError(Exception):
    """Raised by a step whose error must come back the same on replay."""


# -- sequential ---------------------------------------------------------------


@step
async def add_one(tag: str, value: int) -> int:
    mark(tag, "add_one")
    return value + 1


@step
async def double(tag: str, value: int) -> int:
    mark(tag, "double")
    return value * 2


@step(name="describe")
def describe_chain(tag: str, values: list[int]) -> str:
    """A sync step with a custom name."""
    mark(tag, "describe")
    return " -> ".join(str(v) for v in values)


@workflow(name="e2e.sequential")
async def sequential(ctx: WorkflowContext, job: Job) -> str:
    a = await add_one(job.tag, job.value)
    b = await double(job.tag, a)
    return await describe_chain(job.tag, [job.value, a, b])


# -- parallel -----------------------------------------------------------------


class FanOut(BaseModel):
    tag: str
    width: int


@step
async def rendezvous(tag: str, index: int, width: int) -> int:
    """Start, then wait until all ``width`` siblings have started: only
    concurrent execution gets past this."""
    mark(tag, f"start:{index}")
    deadline = time.monotonic() + 15
    while sum(line.startswith("start:") for line in _marked(tag)) < width:
        if time.monotonic() > deadline:
            raise TimeoutError(f"step {index} waited alone: the steps did not run concurrently")
        await asyncio.sleep(0.01)
    return index * index


@step
async def total(tag: str, values: list[int]) -> int:
    mark(tag, "total")
    return sum(values)


@workflow(name="e2e.parallel")
async def parallel(ctx: WorkflowContext, job: FanOut) -> dict[str, Any]:
    squares = await asyncio.gather(*(rendezvous(job.tag, i, job.width) for i in range(job.width)))
    return {"squares": list(squares), "total": await total(job.tag, list(squares))}


# -- conditional and loops ----------------------------------------------------


class Delivery(BaseModel):
    tag: str
    kind: Literal["express", "standard", "digital"]
    weight_kg: float = 1.0


@step
async def ship_express(tag: str, weight_kg: float) -> str:
    mark(tag, "ship_express")
    return f"courier:{weight_kg}"


@step
async def ship_standard(tag: str, weight_kg: float) -> str:
    mark(tag, "ship_standard")
    return f"post:{weight_kg}"


@step
async def email_link(tag: str) -> str:
    mark(tag, "email_link")
    return "download-link"


@workflow(name="e2e.conditional")
async def conditional(ctx: WorkflowContext, delivery: Delivery) -> str:
    if delivery.kind == "digital":
        return await email_link(delivery.tag)
    if delivery.kind == "express" or delivery.weight_kg < 0.5:
        return await ship_express(delivery.tag, delivery.weight_kg)
    return await ship_standard(delivery.tag, delivery.weight_kg)


@step
async def accumulate(tag: str, subtotal: int, index: int) -> int:
    mark(tag, f"accumulate:{index}")
    return subtotal + index


@step
async def halve(tag: str, value: int) -> int:
    mark(tag, "halve")
    return value // 2


@workflow(name="e2e.loop")
async def loop(ctx: WorkflowContext, job: Job) -> dict[str, int]:
    """A for loop of ``job.value`` steps, then a while loop until below 10."""
    subtotal = 0
    for index in range(job.value):
        subtotal = await accumulate(job.tag, subtotal, index)
    remaining, halvings = subtotal, 0
    while remaining >= 10:
        remaining = await halve(job.tag, remaining)
        halvings += 1
    return {"sum": subtotal, "remaining": remaining, "halvings": halvings}


# -- compensation -------------------------------------------------------------


class Purchase(BaseModel):
    tag: str
    decline: bool = False
    reraise: bool = False


@step
async def reserve_stock(tag: str) -> str:
    mark(tag, "reserve")
    return f"reservation-{tag}"


@step
async def charge(tag: str, decline: bool) -> str:
    mark(tag, "charge")
    if decline:
        raise PaymentDeclinedError(f"card declined for {tag}")
    return f"payment-{tag}"


@step
async def release_stock(tag: str, reservation: str) -> None:
    mark(tag, f"release:{reservation}")


@step
async def ship(tag: str, reservation: str) -> str:
    mark(tag, "ship")
    return f"shipped {reservation}"


@workflow(name="e2e.compensate")
async def compensate(ctx: WorkflowContext, purchase: Purchase) -> str:
    reservation = await reserve_stock(purchase.tag)
    try:
        await charge(purchase.tag, purchase.decline)
    except PaymentDeclinedError as declined:
        await release_stock(purchase.tag, reservation)
        if purchase.reraise:
            raise
        return f"declined: {declined}"
    return await ship(purchase.tag, reservation)


# -- crash, replay and cancellation -------------------------------------------


@step
async def first(tag: str) -> str:
    mark(tag, "first")
    return f"first-{tag}"


@step
async def hold(tag: str, label: str) -> str:
    """Block until the test releases ``tag``; record start, end and cancellation."""
    mark(tag, f"{label}:start")
    try:
        await wait_until_released(tag)
    except asyncio.CancelledError:
        mark(tag, f"{label}:cancelled")
        raise
    mark(tag, f"{label}:end")
    return label


@step
async def after(tag: str) -> str:
    mark(tag, "after")
    return "after"


@workflow(name="e2e.crash_resume")
async def crash_resume(ctx: WorkflowContext, job: Job) -> str:
    done = await first(job.tag)
    held = await hold(job.tag, "hold")
    return f"{done}+{held}+{await after(job.tag)}"


@step
async def always_fails(tag: str) -> int:
    mark(tag, "always_fails")
    raise FlakyError(f"flaky failure for {tag}")


@workflow(name="e2e.replay_error")
async def replay_error(ctx: WorkflowContext, job: Job) -> str:
    """Catch a step's error, then block: a replay must re-raise the same error."""
    try:
        await always_fails(job.tag)
    except FlakyError as error:
        caught = f"{type(error).__module__}.{type(error).__qualname__}: {error}"
    await hold(job.tag, "hold")
    return caught


@workflow(name="e2e.cancellable")
async def cancellable(ctx: WorkflowContext, job: Job) -> str:
    await hold(job.tag, "hold")
    return await after(job.tag)


# -- ctx.step -----------------------------------------------------------------


def lookup_rate(tag: str, currency: str) -> float:
    """A plain function, made a step at the call site with ctx.step."""
    mark(tag, f"lookup_rate:{currency}")
    return {"EUR": 0.5, "GBP": 0.25}[currency]


@workflow(name="e2e.ctx_steps")
async def ctx_steps(ctx: WorkflowContext, job: Job) -> dict[str, Any]:
    rate = await ctx.step(lookup_rate)(job.tag, "EUR")

    @ctx.step(name="convert")
    async def convert(amount: int) -> int:
        mark(job.tag, "convert")
        return round(amount * rate)

    return {"rate": rate, "converted": await convert(job.value), "run_id": ctx.run_id}


# -- plain ones ---------------------------------------------------------------


@step
async def echo_step(value: Any) -> Any:
    return value


@workflow(name="e2e.echo")
async def echo(ctx: WorkflowContext, value: Any) -> Any:
    """Return the input unchanged (through one recorded step)."""
    return await echo_step(value)


@step
async def square(value: int) -> int:
    return value * value


@workflow(name="e2e.square")
async def square_workflow(ctx: WorkflowContext, value: int) -> int:
    return await square(value)


@workflow(name="e2e.fail")
async def fail(ctx: WorkflowContext, job: Job) -> int:
    """Raise from workflow code after one step."""
    await add_one(job.tag, job.value)
    raise ValueError(f"boom {job.tag}")


# -- durable sleep --------------------------------------------------------------


class Nap(BaseModel):
    """Input of ``e2e.nap``: sleep ``seconds`` between two steps."""

    tag: str
    seconds: float = 1.0


@step
async def clock(tag: str, label: str) -> float:
    """Mark that it ran; return when (Unix time)."""
    mark(tag, label)
    return time.time()


@workflow(name="e2e.nap")
async def nap(ctx: WorkflowContext, job: Nap) -> dict[str, float]:
    before = await clock(job.tag, "before")
    await ctx.sleep(job.seconds)  # the run is suspended: no worker holds it meanwhile
    after = await clock(job.tag, "after")
    return {"before": before, "after": after, "slept": after - before}


@workflow(name="e2e.two_naps")
async def two_naps(ctx: WorkflowContext, job: Nap) -> dict[str, float]:
    """Two sleeps at once: the shorter wakes the run, which sleeps on for the longer."""
    before = await clock(job.tag, "before")
    await asyncio.gather(ctx.sleep(job.seconds), ctx.sleep(3 * job.seconds))
    after = await clock(job.tag, "after")
    return {"before": before, "after": after, "slept": after - before}


class Ticks(BaseModel):
    """Input of ``e2e.ticker``: ``count`` rounds of a step and a sleep of ``seconds``."""

    tag: str
    count: int
    seconds: float = 0.01


@step
async def tick(tag: str, index: int) -> int:
    mark(tag, f"tick:{index}")
    return index


@workflow(name="e2e.ticker")
async def ticker(ctx: WorkflowContext, job: Ticks) -> int:
    total = 0
    for index in range(job.count):
        total += await tick(job.tag, index)
        await ctx.sleep(job.seconds)
    return total


# -- signals, several waits at once, history ---------------------------------------


class Awaiting(BaseModel):
    """Input of the signal workflows: wait for signal ``name`` (``seconds`` bounds a
    timeout or a race, and ``hold`` blocks a step before the wait until released)."""

    tag: str
    name: str = "go"
    seconds: float = 60.0
    hold: bool = False


@workflow(name="e2e.await_signal")
async def await_signal(ctx: WorkflowContext, job: Awaiting) -> Any:
    """Wait for one signal (after a step that may block) and return its payload."""
    await clock(job.tag, "before")
    if job.hold:
        await hold(job.tag, "hold")
    payload = await ctx.wait_for_signal(job.name)
    await clock(job.tag, "after")
    return payload


@workflow(name="e2e.two_signals")
async def two_signals(ctx: WorkflowContext, job: Awaiting) -> list[Any]:
    """Two waits for the same signal name, one after the other."""
    first = await ctx.wait_for_signal(job.name)
    await clock(job.tag, "first")
    second = await ctx.wait_for_signal(job.name)
    return [first, second]


@workflow(name="e2e.signal_timeout")
async def signal_timeout(ctx: WorkflowContext, job: Awaiting) -> dict[str, Any]:
    """Wait for a signal at most ``seconds``; on a timeout, wait for the next one."""
    try:
        return {"got": await ctx.wait_for_signal(job.name, timeout=job.seconds)}
    except WaitTimeoutError as timeout:
        await clock(job.tag, "timed out")
        return {"timed_out": timeout.wait_key, "then": await ctx.wait_for_signal(job.name)}


@workflow(name="e2e.sleep_or_signal")
async def sleep_or_signal(ctx: WorkflowContext, job: Awaiting) -> dict[str, Any]:
    """Race a sleep against a signal; after the sleep wins, wait for the signal again."""
    index, value = await ctx.first(ctx.sleep(job.seconds), ctx.wait_for_signal(job.name))
    if index == 1:
        return {"winner": "signal", "value": value}
    await clock(job.tag, "slept")
    # The lost signal wait (signal:1) was dropped; this one (signal:2) gets the signal.
    return {"winner": "sleep", "later": await ctx.wait_for_signal(job.name)}


@step
async def prepare(tag: str) -> str:
    mark(tag, "prepare")
    return "ready"


@step
async def finish(tag: str, value: Any) -> str:
    mark(tag, "finish")
    return f"finished with {value}"


@workflow(name="e2e.chronicle")
async def chronicle(ctx: WorkflowContext, job: Awaiting) -> str:
    """A step, a log entry, a signal wait, another step: a run with a full history."""
    state = await prepare(job.tag)
    ctx.log("waiting for a signal", state=state, signal=job.name)
    value = await ctx.wait_for_signal(job.name)
    return await finish(job.tag, value)


@workflow(name="e2e.reminders")
async def reminders(ctx: WorkflowContext, job: Awaiting) -> dict[str, Any]:
    """Remind every ``seconds`` until a signal comes: the signal wait is one task kept
    across the rounds (asyncio.wait), each round adds a new sleep."""
    approved = asyncio.create_task(ctx.wait_for_signal(job.name))
    reminders = 0
    while True:
        timer = asyncio.create_task(ctx.sleep(job.seconds))
        done, _ = await asyncio.wait({approved, timer}, return_when=asyncio.FIRST_COMPLETED)
        if approved in done:
            timer.cancel()
            return {"reminders": reminders, "signal": approved.result()}
        reminders += 1
        await clock(job.tag, f"reminder {reminders}")


# -- events ------------------------------------------------------------------------


class Order(BaseModel):
    """Input of ``e2e.order_paid``: wait for order ``order`` to be paid within ``seconds``."""

    tag: str
    order: int
    seconds: float = 60.0


class Paid(BaseModel):
    """The payload of an ``order.paid`` event."""

    order: int
    amount: int


@workflow(name="e2e.order_paid")
async def order_paid(ctx: WorkflowContext, job: Order) -> dict[str, Any]:
    """Send an invoice, then wait for the event that says this order was paid."""
    await clock(job.tag, "invoiced")
    try:
        paid = await ctx.wait_for_event(
            "order.paid", match={"order": job.order}, timeout=job.seconds, type=Paid
        )
    except WaitTimeoutError as timeout:
        return {"timed_out": timeout.wait_key}
    return {"order": paid.order, "paid": paid.amount}


class Listening(BaseModel):
    """Input of ``e2e.await_event``: wait for event ``name`` (with payload fields
    ``match``, if given); ``hold`` blocks a step ``"before"`` the wait begins or
    ``"during"`` it (gathered with the wait)."""

    tag: str
    name: str = "ping"
    hold: Literal["no", "before", "during"] = "no"
    match: dict[str, Any] | None = None


@workflow(name="e2e.await_event")
async def await_event(ctx: WorkflowContext, job: Listening) -> Any:
    """Wait for one event of any payload (around a step that may block)."""
    if job.hold == "before":
        await hold(job.tag, "hold")
    waiting = ctx.wait_for_event(job.name, match=job.match)  # the wait begins here
    if job.hold == "during":
        _, payload = await asyncio.gather(hold(job.tag, "hold"), waiting)
    else:
        payload = await waiting
    await clock(job.tag, "after")
    return payload


@workflow(name="e2e.event_reminders")
async def event_reminders(ctx: WorkflowContext, job: Awaiting) -> dict[str, Any]:
    """Remind every ``seconds`` until event ``name`` comes: the event wait is one task
    kept across the rounds (asyncio.wait), each round adds a new sleep."""
    event = asyncio.create_task(ctx.wait_for_event(job.name))
    reminders = 0
    while True:
        timer = asyncio.create_task(ctx.sleep(job.seconds))
        done, _ = await asyncio.wait({event, timer}, return_when=asyncio.FIRST_COMPLETED)
        if event in done:
            timer.cancel()
            return {"reminders": reminders, "event": event.result()}
        reminders += 1
        await clock(job.tag, f"reminder {reminders}")


# -- hooks -------------------------------------------------------------------------


class Approval(BaseModel):
    """Input of ``e2e.approval``: wait at most ``seconds`` for the approval hook; ``slow``
    blocks a step between making the hook and waiting on it, until released."""

    tag: str
    seconds: float = 60.0
    slow: bool = False


@step
async def send_approval_email(tag: str, token: str) -> str:
    """Stands for an email with an approval link: the token goes to ``<tag>.token``."""
    mark(tag, "email")
    # Written whole, then renamed: the test reads the token once the file exists.
    staged = marks_dir() / f"{tag}.token.tmp"
    staged.write_text(token)
    staged.replace(marks_dir() / f"{tag}.token")
    return "sent"


@workflow(name="e2e.approval")
async def approval(ctx: WorkflowContext, job: Approval) -> dict[str, Any]:
    """Send an approval link, then wait for someone to follow it (execute the hook)."""
    hook = ctx.create_hook()
    await send_approval_email(job.tag, hook.token)
    if job.slow:
        await hold(job.tag, "hold")
    try:
        decision = await ctx.wait_for_hook(hook, timeout=job.seconds)
    except WaitTimeoutError as timeout:
        return {"timed_out": timeout.wait_key}
    return {"decision": decision, "token": hook.token}


@step
async def collector_settings() -> list[int]:
    """This process's garbage collector: [young-generation threshold, objects frozen]."""
    return [gc.get_threshold()[0], gc.get_freeze_count()]


@workflow(name="e2e.collector")
async def collector(ctx: WorkflowContext) -> list[int]:
    """How the worker process that runs it set up its garbage collector."""
    return await collector_settings()
