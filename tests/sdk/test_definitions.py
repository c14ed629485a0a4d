"""The @workflow and @step decorators, ctx.step, and Worker's definition checks."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from stepd import Client, Debounce, Rate, Step, Worker, Workflow, WorkflowContext, step, workflow
from stepd.errors import StepdError, WorkflowDefinitionError


@dataclass
class Order:
    id: int


@step
async def charge(order: Order, amount: int = 1) -> int:
    """Charge the card."""
    return order.id * amount


@step(name="reserve-stock")
def reserve(order: Order) -> str:
    return f"reserved {order.id}"


@workflow
async def process(ctx: WorkflowContext, order: Order) -> int:
    return await charge(order)


@workflow(name="orders.process", version=2)
async def process_v2(ctx: WorkflowContext) -> None:
    return None


def test_step_bare_and_named() -> None:
    assert isinstance(charge, Step)
    assert charge.name == "charge"
    assert charge.is_async
    assert reserve.name == "reserve-stock"
    assert not reserve.is_async


def test_step_keeps_signature_and_metadata() -> None:
    assert charge.__name__ == "charge"
    assert charge.__doc__ == "Charge the card."
    assert str(inspect.signature(charge)) == "(order: 'Order', amount: 'int' = 1) -> 'int'"


async def test_step_outside_a_workflow_just_runs() -> None:
    assert await charge(Order(3), amount=2) == 6
    assert await reserve(Order(4)) == "reserved 4"


def test_workflow_bare_and_with_options() -> None:
    assert isinstance(process, Workflow)
    assert (process.name, process.version) == ("process", "1")
    assert process.input_param == "order"
    assert (process_v2.name, process_v2.version) == ("orders.process", "2")
    assert process_v2.input_param is None
    assert process.__name__ == "process"


async def test_workflow_call_runs_the_function() -> None:
    ctx = WorkflowContext("r", "process", "1")
    assert await process(ctx, Order(5)) == 5


def test_workflow_type_adapters_follow_annotations() -> None:
    assert process.input_adapter.validate_python({"id": 1}) == Order(1)
    assert process.result_adapter.validate_python(3) == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def wf(ctx):\n    pass", "async def"),
        ("async def wf():\n    pass", "first parameter"),
        ("async def wf(*, ctx):\n    pass", "first parameter"),
        ("async def wf(ctx: int):\n    pass", "must be the WorkflowContext"),
        ("async def wf(ctx, a, b):\n    pass", "at most one input"),
        ("async def wf(ctx, *args):\n    pass", "at most one input"),
        ("async def wf(ctx, **kw):\n    pass", "at most one input"),
        ("async def wf(ctx, *, a=1):\n    pass", "at most one input"),
    ],
)
def test_workflow_definition_errors(source: str, message: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(WorkflowDefinitionError, match=message):
        workflow(namespace["wf"])


def test_workflow_annotations_accepted() -> None:
    async def as_string(ctx: WorkflowContext, x: int = 0) -> None: ...

    async def unannotated(ctx, x):  # type: ignore[no-untyped-def,unused-ignore]
        ...

    assert workflow(as_string).input_optional
    assert not workflow(unannotated).input_optional


def test_the_context_annotation_is_checked_as_a_class() -> None:
    class OwnContext(WorkflowContext):
        pass

    class Impostor:
        pass

    Impostor.__name__ = Impostor.__qualname__ = "WorkflowContext"
    source = "async def wf(ctx: Context, x: int) -> int:\n    return x"
    for context, accepted in ((WorkflowContext, True), (OwnContext, True), (Impostor, False)):
        namespace: dict[str, Any] = {"Context": context}
        # Compiled without this module's __future__ import: the annotation is the class.
        exec(compile(source, "<wf>", "exec", dont_inherit=True), namespace)
        if accepted:
            assert workflow(namespace["wf"]).input_param == "x"
        else:
            with pytest.raises(WorkflowDefinitionError, match="must be the WorkflowContext"):
                workflow(namespace["wf"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": ""}, "non-empty"),
        ({"version": ""}, "version must not be empty"),
        ({"version": 1.5}, "version must be a str or int"),
        ({"version": True}, "version must be a str or int"),
        # The server's limits on a hello: the SDK never sends one past them.
        ({"events": [f"e{i}" for i in range(33)]}, "at most 32 events"),
        ({"events": ["e" * 201]}, "at most 200 characters"),
        ({"execution_timeout": 3651 * 86400}, "execution_timeout is at most"),
    ],
)
def test_workflow_option_errors(options: dict[str, Any], message: str) -> None:
    async def wf(ctx: WorkflowContext) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match=message):
        workflow(**options)(wf)


def test_definition_error_is_a_stepd_error() -> None:
    assert issubclass(WorkflowDefinitionError, StepdError)


def test_step_definition_errors() -> None:
    async def f() -> None: ...

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(WorkflowDefinitionError, match="'#'"):
        step(name="a#2")(f)
    with pytest.raises(WorkflowDefinitionError, match="non-empty"):
        step(name=" ")(f)
    with pytest.raises(WorkflowDefinitionError, match="generator"):
        step(agen)
    with pytest.raises(WorkflowDefinitionError, match="is a workflow"):
        step(process)
    with pytest.raises(WorkflowDefinitionError, match="callable"):
        step(42)  # type: ignore[call-overload]
    with pytest.raises(WorkflowDefinitionError, match="already decorated"):
        workflow(process)


def test_context_step_forms() -> None:
    ctx = WorkflowContext("run", "wf", "3")
    assert (ctx.run_id, ctx.workflow_name, ctx.version) == ("run", "wf", "3")

    def plain(x: int) -> int:
        return x

    assert ctx.step(plain).name == "plain"

    @ctx.step
    async def notify() -> None: ...

    @ctx.step(name="notify-2")
    async def notify_again() -> None: ...

    assert notify.name == "notify"
    assert notify_again.name == "notify-2"
    assert ctx.step(charge).fn is charge.fn  # an existing step keeps its function


def test_worker_rejects_duplicate_versions() -> None:
    async def first(ctx: WorkflowContext) -> None: ...

    async def second(ctx: WorkflowContext) -> None: ...

    a = workflow(name="same", version=1)(first)
    b = workflow(name="same", version="1")(second)
    with pytest.raises(WorkflowDefinitionError, match="two workflows"):
        Worker("127.0.0.1:1", workflows=[a, b])
    worker = Worker("127.0.0.1:1", workflows=[a, a, process])  # the same object twice is fine
    assert len(worker.workflows) == 2


def test_worker_rejects_bad_arguments() -> None:
    async def plain(ctx: WorkflowContext) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="not a workflow"):
        Worker("127.0.0.1:1", workflows=[plain])  # type: ignore[list-item]
    with pytest.raises(WorkflowDefinitionError, match="at least one"):
        Worker("127.0.0.1:1", workflows=[])
    with pytest.raises(ValueError, match="concurrency"):
        Worker("127.0.0.1:1", workflows=[process], concurrency=0)
    with pytest.raises(ValueError, match="server address"):
        Worker("", workflows=[process])
    with pytest.raises(TypeError, match="server address or a Client"):
        Worker(50051, workflows=[process])  # type: ignore[arg-type]


def test_a_worker_takes_its_connection_settings_from_a_client() -> None:
    client = Client("10.0.0.7:50051")
    worker = Worker(client, workflows=[process])
    assert worker.address == "10.0.0.7:50051"
    assert client.connection.address == "10.0.0.7:50051"


@step
async def returns_later() -> Later:
    return Later(1)


@dataclass
class Later:
    v: int


@step
async def returns_unknown() -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
    return None


def test_forward_references_resolve_on_first_use() -> None:
    assert returns_later.result_adapter.validate_python({"v": 2}) == Later(2)
    with pytest.raises(WorkflowDefinitionError, match="cannot resolve the type annotations"):
        returns_unknown.result_adapter  # noqa: B018


# -- events and schedules -------------------------------------------------------


def test_events_and_schedule_are_kept_and_checked_when_applied() -> None:
    from stepd.schedules import CatchupPolicy, OverlapPolicy, Schedule

    @workflow(events=["a", "b", "a"], schedule="*/5 * * * *")
    async def both(ctx: WorkflowContext) -> None: ...

    assert both.events == ("a", "b")
    assert both.schedule == Schedule("*/5 * * * *")
    assert both.schedule.overlap is OverlapPolicy.SKIP
    assert Schedule("0 * * * *", catchup="run_once").catchup is CatchupPolicy.RUN_ONCE

    for bad, message in (
        ({"events": "a"}, "list of event names"),
        ({"events": [""]}, "non-empty"),
        ({"schedule": "every day"}, "not a valid cron"),
        ({"schedule": 5}, "Schedule or a cron string"),
    ):
        with pytest.raises(WorkflowDefinitionError, match=message):

            @workflow(**bad)  # type: ignore[arg-type]
            async def broken(ctx: WorkflowContext) -> None: ...

    with pytest.raises(ValueError, match="time zone"):
        Schedule("* * * * *", time_zone="Nowhere/Land")
    for zone in ("x" * 300, "Europe/" + "y" * 300, "bad\x00zone"):  # no OSError
        with pytest.raises(ValueError, match="time zone") as raised:
            Schedule("* * * * *", time_zone=zone)
        assert len(str(raised.value)) < 120
    with pytest.raises(ValueError, match="unknown policy"):
        Schedule("* * * * *", overlap="sometimes")


def test_a_schedule_input_that_does_not_fit_the_workflow_fails_in_the_worker() -> None:
    from stepd.schedules import Schedule

    @workflow(schedule=Schedule("* * * * *", input={"wrong": 1}))
    async def typed(ctx: WorkflowContext, value: int) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="schedule's input"):
        Worker("127.0.0.1:1", workflows=[typed])


def test_a_worker_stays_within_the_server_s_hello_limits() -> None:
    async def wf(ctx: WorkflowContext) -> None: ...

    many = [workflow(name=f"limits.w{i}")(wf) for i in range(1001)]
    with pytest.raises(WorkflowDefinitionError, match="at most 1000 workflow versions"):
        Worker("127.0.0.1:1", workflows=many)
    versions = [workflow(name="limits.v", version=v)(wf) for v in range(101)]
    with pytest.raises(WorkflowDefinitionError, match="at most 100 versions"):
        Worker("127.0.0.1:1", workflows=versions)
    with pytest.raises(ValueError, match="concurrency must be an int from 1 to 10000"):
        Worker("127.0.0.1:1", workflows=many[:1], concurrency=10_001)
    with pytest.raises(ValueError, match="max_cached_runs must be an int from 0 to 100000"):
        Worker("127.0.0.1:1", workflows=many[:1], max_cached_runs=100_001)
    Worker("127.0.0.1:1", workflows=many[:1000], concurrency=10_000, max_cached_runs=100_000)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 1001}, "priority must be an int from -1000 to 1000"),
        ({"priority": True}, "priority must be an int"),
        ({"start_rate": 10}, "a rate must be a stepd.Rate"),
        ({"start_rate": Rate(0)}, "rate limit must be an int from 1 to 10000"),
        ({"start_rate": Rate(1, per=0)}, "rate per must be|must be longer"),
        ({"start_rate": Rate(1, key=lambda job: "k")}, "a start rate's key must be a str path"),
        ({"debounce": Debounce(period=0)}, "debounce period must be from 1 ms to 7 days"),
        ({"debounce": Debounce(period=5, max_wait=1)}, "max_wait must be from the period"),
        (
            {"debounce": Debounce(period=1), "start_rate": Rate(1)},
            "debounce and start_rate cannot be combined",
        ),
    ],
)
def test_flow_options_are_checked_when_applied(options: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=message):

        @workflow(name="flow_bad", **options)
        async def flow_bad(ctx: WorkflowContext) -> None:
            return None


def test_a_step_rate_takes_a_fixed_key_or_a_function_of_the_arguments() -> None:
    @step(rate=Rate(2, per="1m", key=lambda customer, amount: customer))
    async def charge_customer(customer: str, amount: int) -> int:
        return amount

    assert charge_customer.rate is not None
    assert charge_customer.rate.key_for(("c1", 5), {}) == "c1"
    assert charge_customer.rate.period_ms == 60_000
    with pytest.raises(WorkflowDefinitionError, match="rate limit must be"):
        step(rate=Rate(20_000))
