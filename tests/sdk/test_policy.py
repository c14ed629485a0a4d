"""Failure-policy definitions: durations, retry policies and backoff, checked when a
workflow or step is defined."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stepd import RetryPolicy, WorkflowContext, step, workflow
from stepd._policy import parse_duration
from stepd.errors import (
    NonRetryableError,
    StepFailedError,
    StepTimeoutError,
    WorkflowDefinitionError,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("500ms", 0.5),
        ("30 seconds", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h 30m", 5400.0),
        ("2 days", 172800.0),
        ("45", 45.0),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_durations_are_read_from_numbers_text_and_timedeltas(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "10 parsecs", "", "5m later", "-1s", True, None, [1]])
def test_unreadable_durations_are_rejected(text: object) -> None:
    with pytest.raises(WorkflowDefinitionError):
        parse_duration(text)


def test_negative_durations_are_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError, match=">= 0"):
        parse_duration(-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "at least 1"),
        ({"delay": -1}, ">= 0"),
        ({"delay": "a while"}, "cannot read"),
        ({"backoff": "fibonacci"}, "backoff must be"),
        ({"factor": 0.5}, "factor must be >= 1"),
        ({"jitter": 2}, "jitter"),
        ({"max_delay": "x"}, "cannot read"),
        ({"non_retryable": [42]}, "exception types"),
    ],
)
def test_invalid_policies_are_rejected_when_defined(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(WorkflowDefinitionError, match=message):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_invalid_options_fail_the_decorator_not_the_first_failure() -> None:
    with pytest.raises(WorkflowDefinitionError, match="timeout"):

        @step(timeout="eventually")
        async def a() -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="longer than 0"):

        @step(timeout=0)
        async def b() -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="retry must be"):

        @step(retry="3 times")  # type: ignore[call-overload,untyped-decorator]
        async def c() -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="execution_timeout"):

        @workflow(execution_timeout="-1s")
        async def d(ctx: WorkflowContext) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="max_entries"):

        @workflow(max_entries=0)
        async def e(ctx: WorkflowContext) -> None: ...


def test_backoff_kinds() -> None:
    constant = RetryPolicy(5, delay="1s", backoff="constant")
    linear = RetryPolicy(5, delay="1s", backoff="linear")
    exponential = RetryPolicy(5, delay="1s", backoff="exponential", factor=3, max_delay="20s")
    assert [constant.delay_after(n) for n in (1, 2, 3)] == [1, 1, 1]
    assert [linear.delay_after(n) for n in (1, 2, 3)] == [1, 2, 3]
    assert [exponential.delay_after(n) for n in (1, 2, 3, 4)] == [1, 3, 9, 20]
    huge = RetryPolicy(2000, delay=1, factor=10)
    assert huge.delay_after(1500) == 365 * 86400  # capped, no overflow


def test_jitter_is_bounded_and_the_same_on_replay() -> None:
    policy = RetryPolicy(5, delay=10, backoff="constant", jitter=0.2)
    delays = [policy.delay_after(n, "run-1:charge") for n in range(1, 50)]
    assert all(8 <= d <= 12 for d in delays)
    assert len(set(delays)) > 1
    assert delays == [policy.delay_after(n, "run-1:charge") for n in range(1, 50)]


def test_which_errors_are_retried() -> None:
    class Declined(ValueError):
        pass

    policy = RetryPolicy(3, non_retryable=[ValueError, "mymodule.Fatal"])
    assert policy.retries(ConnectionError("x"), 1)
    assert policy.retries(ConnectionError("x"), 2)
    assert not policy.retries(ConnectionError("x"), 3)  # the last attempt
    assert not policy.retries(Declined("x"), 1)  # a subclass of a listed type
    assert not policy.retries(NonRetryableError("x"), 1)
    assert not policy.retries(StepFailedError("mymodule.Fatal", "x"), 1)  # by name
    assert policy.retries(StepTimeoutError("slow"), 1)
    assert not RetryPolicy(1).retries(ConnectionError("x"), 1)


def test_steps_and_workflows_keep_their_policies() -> None:
    @workflow(retry=RetryPolicy(4), step_timeout="30s", execution_timeout="1h", max_entries=500)
    async def flow(ctx: WorkflowContext) -> None: ...

    @step(retry=2, timeout="500ms")
    async def fast() -> None: ...

    assert flow.retry == RetryPolicy(4)
    assert flow.step_timeout == 30.0
    assert flow.execution_timeout == 3600.0
    assert flow.max_entries == 500
    assert fast.retry == RetryPolicy(2)
    assert fast.timeout == 0.5
