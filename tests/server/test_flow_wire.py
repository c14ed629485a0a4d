"""Flow control on the wire, against a real in-process server: acquire_rate's
turns and its bad input, and hellos with bad flow-control settings."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from stepd.v1 import worker_service_pb2 as ws
from stepd.v1 import worker_service_pb2_grpc
from tests.server.conftest import Harness

OK = ws.COMMAND_STATUS_OK
INVALID = ws.COMMAND_STATUS_INVALID


def acquire(limit: int, period_ms: int, key: str = "k") -> dict[str, ws.AcquireRateCommand]:
    period = Duration()
    period.FromMilliseconds(period_ms)
    command = ws.AcquireRateCommand(name="api", key=key, limit=limit, period=period, step_key="s")
    return {"acquire_rate": command}


async def test_acquire_rate_answers_the_delay_until_the_turn(harness: Harness) -> None:
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    results = await worker.send_batch(task, acquire(2, 10_000), acquire(2, 10_000))
    assert [r.status for r in results] == [OK, OK]
    assert results[0].start_after.ToMilliseconds() == 0
    assert 4_900 <= results[1].start_after.ToMilliseconds() <= 5_000  # 10 s / 2 turns
    other_key = await worker.send(task, **acquire(2, 10_000, key="other"))
    assert other_key.start_after.ToMilliseconds() == 0


async def test_a_bad_acquire_rate_is_invalid(harness: Harness) -> None:
    worker = harness.worker("w")
    await harness.trigger("w")
    task = await worker.next_task()
    result = await worker.send(task, **acquire(0, 1000))
    assert result.status == INVALID
    assert "acquire_rate.limit must be from 1 to 10000" in result.message


@pytest.mark.parametrize(
    ("registration", "message"),
    [
        (ws.WorkflowRegistration(priority=5000), "priority must be from -1000 to 1000"),
        (
            ws.WorkflowRegistration(
                start_rate=ws.RateLimit(limit=1, period=Duration(seconds=1)),
                debounce=ws.Debounce(period=Duration(seconds=1)),
            ),
            "declares both debounce and start_rate",
        ),
        (ws.WorkflowRegistration(start_rate=ws.RateLimit(limit=1)), "start_rate.period must be"),
        (
            ws.WorkflowRegistration(
                debounce=ws.Debounce(period=Duration(seconds=5), max_wait=Duration(seconds=1))
            ),
            "debounce.max_wait must be from the period to 7 days",
        ),
    ],
)
async def test_a_hello_with_bad_flow_settings_is_invalid(
    harness: Harness, registration: ws.WorkflowRegistration, message: str
) -> None:
    registration.name, registration.version = "flow_bad", "1"
    hello = ws.WorkerHello(worker_id="w1", workflows=[registration], capacity=1)
    stub = worker_service_pb2_grpc.WorkerServiceStub(harness.channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield ws.PollTaskRequest(hello=hello)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.PollTask(requests()):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
