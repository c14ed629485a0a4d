"""How long the largest worker messages stall the server's event loop.

``python bench/worker_limits.py [--database PATH_OR_URL] [--stepd PATH]``

Starts ``stepd serve`` as a separate process, then sends over ``PollTask``,
one phase at a time: the largest hello the limits allow (1,000 workflow
versions, 32 event triggers each, every name at its longest), the largest
batch (1,000 ``record_step`` commands with ~4 KB results for a real run, near
the 4 MiB a worker message may have), a
hello and a batch far past the limits (100,000 workflows; 1,000,000
commands). Meanwhile a probe sends ``GetServerInfo`` every 5 ms; a call
answered late means the server's event loop was busy. Prints JSON: per phase
the probe's round-trip max and p99 (ms) and the server's answer.

``--stepd`` runs another build's ``stepd`` (e.g. an older checkout's) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from stepd.v1 import types_pb2, worker_service_pb2, workflow_service_pb2  # noqa: E402
from stepd.v1 import workflow_service_pb2_grpc as wf_grpc  # noqa: E402
from tests.e2e.harness import Stack  # noqa: E402

if TYPE_CHECKING:
    from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

POLL_TASK = "/stepd.v1.WorkerService/PollTask"
NAME = 200  # the longest name


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def big_hello(workflows: int, triggers: int, tag: str) -> worker_service_pb2.PollTaskRequest:
    registrations = [
        worker_service_pb2.WorkflowRegistration(
            name=f"{tag}.{i // 100}".ljust(NAME, "w"),
            version=str(i % 100).rjust(NAME, "0"),
            event_triggers=[f"{tag}.e{i}.{j}".ljust(NAME, "e") for j in range(triggers)],
        )
        for i in range(workflows)
    ]
    return worker_service_pb2.PollTaskRequest(
        hello=worker_service_pb2.WorkerHello(
            worker_id=f"bench-{tag}", identity="x" * 1000, workflows=registrations, capacity=10
        )
    )


class Probe:
    """GetServerInfo every few ms; the round trips of the current phase."""

    def __init__(self, stub: WorkflowServiceAsyncStub) -> None:
        self.stub = stub
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await self.stub.GetServerInfo(workflow_service_pb2.GetServerInfoRequest())
            self.samples.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.005)

    def take(self) -> dict[str, float]:
        samples, self.samples = self.samples or [0.0], []
        return {
            "max_ms": round(max(samples), 1),
            "p99_ms": round(percentile(samples, 99), 1),
            "calls": len(samples),
        }


async def stream(
    channel: grpc.aio.Channel, messages: list[bytes], expect: int
) -> tuple[str, list[worker_service_pb2.PollTaskResponse]]:
    """Send ``messages`` on a stream; read until ``expect`` command results (or the end)."""
    done = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message
        await done.wait()

    call = channel.stream_stream(POLL_TASK, request_serializer=None, response_deserializer=None)(
        requests()
    )
    responses = []
    results = 0
    try:
        async with asyncio.timeout(300):
            async for raw in call:
                response = worker_service_pb2.PollTaskResponse.FromString(raw)
                responses.append(response)
                results += len(response.results)
                if results >= expect and (expect or response.HasField("settings")):
                    break
        outcome = "answered"
    except grpc.aio.AioRpcError as exc:
        outcome = f"{exc.code().name}: {(exc.details() or '')[:120]}"
    done.set()
    call.cancel()
    return outcome, responses


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="stepd-limits-"))
    stack = Stack(workdir)
    if args.stepd:
        import tests.e2e.harness as harness

        harness.console_script = lambda name, module: [args.stepd]
    server = stack.start_server(
        args.database or workdir / "stepd.db", args=["--log-level", "WARNING"]
    )
    report: dict[str, Any] = {"database": "postgresql" if args.database else "sqlite"}
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    try:
        async with grpc.aio.insecure_channel(server.address, options=options) as channel:
            stub: WorkflowServiceAsyncStub = wf_grpc.WorkflowServiceStub(channel)
            # Every message is built first: building one takes this process's loop.
            hello = big_hello(1000, 32, "max").SerializeToString()
            hello_bytes = big_hello(1, 0, "h").SerializeToString()
            too_big = big_hello(100_000, 0, "huge").SerializeToString()
            hostile = worker_service_pb2.PollTaskRequest(
                commands=worker_service_pb2.WorkerCommandBatch(
                    commands=[
                        worker_service_pb2.WorkerCommand(
                            command_id=i,
                            run_id="r",
                            lease_id=1,
                            release_run=worker_service_pb2.ReleaseRunCommand(),
                        )
                        for i in range(1_000_000)
                    ]
                )
            ).SerializeToString()
            probe = Probe(stub)
            probing = asyncio.create_task(probe.run())
            await asyncio.sleep(1)
            report["idle"] = probe.take()

            outcome, _ = await stream(channel, [hello], 0)
            report["max_hello"] = {**probe.take(), "bytes": len(hello), "server": outcome}

            # The largest batch: 1,000 step records of a real run, ~60 KB each.
            small = worker_service_pb2.PollTaskRequest(
                hello=worker_service_pb2.WorkerHello(
                    worker_id="bench-batch",
                    workflows=[worker_service_pb2.WorkflowRegistration(name="b", version="1")],
                    capacity=1,
                )
            )
            await stub.Trigger(
                workflow_service_pb2.TriggerRequest(
                    workflow_name="b", input=types_pb2.Payload(json="{}")
                )
            )
            task_call = channel.stream_stream(
                POLL_TASK, request_serializer=None, response_deserializer=None
            )
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            queue.put_nowait(small.SerializeToString())

            async def requests() -> AsyncIterator[bytes]:
                while (item := await queue.get()) is not None:
                    yield item

            call = task_call(requests())
            task = None
            async for raw in call:
                response = worker_service_pb2.PollTaskResponse.FromString(raw)
                if response.tasks:
                    task = response.tasks[0]
                    break
            assert task is not None
            value = json.dumps(["x" * 100] * 38)  # ~4 KB: 1,000 of them fill 4 MiB
            commands = [
                worker_service_pb2.WorkerCommand(
                    command_id=i + 1,
                    run_id=task.run_id,
                    lease_id=task.lease_id,
                    record_step=worker_service_pb2.RecordStepCommand(
                        step=types_pb2.StepRecord(
                            step_key=f"s{i}", attempt=1, result=types_pb2.Payload(json=value)
                        )
                    ),
                )
                for i in range(1000)
            ]
            batch = worker_service_pb2.PollTaskRequest(
                commands=worker_service_pb2.WorkerCommandBatch(commands=commands)
            ).SerializeToString()
            probe.take()
            queue.put_nowait(batch)
            results = 0
            async for raw in call:
                results += len(worker_service_pb2.PollTaskResponse.FromString(raw).results)
                if results >= 1000:
                    break
            report["max_batch"] = {**probe.take(), "bytes": len(batch), "results": results}
            queue.put_nowait(None)
            call.cancel()

            probe.take()
            outcome, _ = await stream(channel, [hello_bytes, hostile], 1_000_000)
            report["batch_1m_commands"] = {
                **probe.take(),
                "bytes": len(hostile),
                "server": outcome,
            }

            probe.take()
            outcome, _ = await stream(channel, [too_big], 0)
            report["hello_100k_workflows"] = {
                **probe.take(),
                "bytes": len(too_big),
                "server": outcome,
            }
            probing.cancel()
    finally:
        stack.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=None, help="a PostgreSQL URL (default: SQLite)")
    parser.add_argument("--stepd", default=None, help="the stepd executable to run")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
