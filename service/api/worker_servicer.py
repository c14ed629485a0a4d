"""stepd.v1.WorkerService: the PollTask stream between a worker and the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from stepd.server.api.convert import (
    check_hello,
    command_from_proto,
    workflow_limits,
)
from stepd.server.api.convert_schedules import declarations_from_hello
from stepd.server.api.errors import Undecodable, client_status, server_fault, store_status
from stepd.server.api.stream_messages import responses
from stepd.server.engine.commands import Command
from stepd.server.engine.engine import Engine
from stepd.server.engine.errors import EngineError, InvalidArgument
from stepd.server.engine.sessions import WorkerSession
from stepd.server.engine.validation import worker_message_bytes
from stepd.server.store.errors import StoreError
from stepd.v1 import worker_service_pb2 as pb
from stepd.v1 import worker_service_pb2_grpc

log = logging.getLogger("stepd.api")

Context = grpc.aio.ServicerContext[Any, Any]
HELLO_TIMEOUT_SECONDS = 30.0
RPC = "PollTask"
#: How many commands are converted before the event loop gets a turn.
_CONVERT_SLICE = 64
#: A stream ended for these leaves one INFO line (a worker past a limit).
_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """The worker-facing API: one long-lived bidirectional stream per worker.

    It decodes what the worker sends and encodes what the engine queues for it;
    the engine applies commands (in order) and decides what the worker gets.
    A stream the server ends carries a status and a reason: INVALID_ARGUMENT
    for a hello or a message it cannot accept, UNAVAILABLE when the server
    shuts down or the worker's lease expired, INTERNAL for a fault of the
    server. A bad command does not end the stream: it gets its own INVALID
    result.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._tasks: set[asyncio.Task[None]] = set()

    async def PollTask(
        self, request_iterator: AsyncIterator[pb.PollTaskRequest], context: Context
    ) -> AsyncIterator[pb.PollTaskResponse]:
        requests = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(requests), HELLO_TIMEOUT_SECONDS)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await self._abort(
                context,
                InvalidArgument(
                    f"send a hello as the first PollTask message within {HELLO_TIMEOUT_SECONDS:g} s"
                ),
            )
            return
        try:
            session = await self._connect(first)
        except EngineError as exc:
            await self._abort(context, exc)
            return
        except StoreError as exc:
            await context.abort(*store_status(exc, RPC))
            return
        reader = asyncio.create_task(self._read(requests, session))
        try:
            yield pb.PollTaskResponse(settings=self._settings())
            while (batch := await session.next_batch()) is not None:
                for response in responses(batch, now_ms=self._engine.clock.now_ms()):
                    yield response
        except Exception:
            code, message = server_fault(RPC, None)
            session.close()
            await context.abort(code, message)
        finally:
            reader.cancel()
            # grpc cancels this handler when the worker's connection drops; the
            # re-queue of the worker's runs must still finish, so it runs as
            # its own task that the cancellation cannot interrupt.
            cleanup = asyncio.create_task(self._engine.disconnect_worker(session))
            self._tasks.add(cleanup)
            cleanup.add_done_callback(self._tasks.discard)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(cleanup)
        if session.end_error is not None:
            await self._abort(context, session.end_error)

    async def _connect(self, first: pb.PollTaskRequest | Undecodable) -> WorkerSession:
        """Check the hello and register the worker's session."""
        if isinstance(first, Undecodable):
            raise first.error()
        if first.WhichOneof("message") != "hello":
            raise InvalidArgument("the first PollTask message must be a hello")
        hello = first.hello
        # A hello at its limits takes tens of milliseconds per pass over it: the
        # event loop gets a turn between them.
        check_hello(hello)
        await asyncio.sleep(0)
        declarations = declarations_from_hello(hello)
        await asyncio.sleep(0)
        return await self._engine.connect_worker(
            hello.worker_id,
            hello.identity,
            [(w.name, w.version) for w in hello.workflows],
            hello.capacity,
            declarations,
            limits=workflow_limits(hello),
            max_cached_runs=hello.max_cached_runs,
            early_capacity=hello.early_capacity,
        )

    async def _abort(self, context: Context, exc: EngineError) -> None:
        code, message = client_status(exc, RPC)
        if code is grpc.StatusCode.INTERNAL:
            log.error("PollTask ended: %s", message)
        elif code in _REFUSALS:
            log.info("PollTask ended: %s: %s", code.name, message)
        await context.abort(code, message)

    async def _read(
        self, requests: AsyncIterator[pb.PollTaskRequest | Undecodable], session: WorkerSession
    ) -> None:
        end: EngineError | None = None
        try:
            async for request in requests:
                self._engine.heard_from(session)
                if isinstance(request, Undecodable):
                    end = request.error()
                    break
                kind = request.WhichOneof("message")
                if kind == "commands":
                    commands = await _converted(request.commands.commands)
                    task = asyncio.create_task(self._engine.apply_commands(session, commands))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif kind == "drain":
                    reason = request.drain.reason[:200] or "no reason given"
                    self._engine.drain_worker(session, reason)
                elif kind == "hello":
                    log.warning("worker %s sent a second hello; ignored", session.identity)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            log.exception("reading from worker %s failed", session.identity)
            end = EngineError("internal error reading the stream; see the server log")
        finally:
            session.close(end)

    def _settings(self) -> pb.StreamSettings:
        settings = pb.StreamSettings()
        settings.heartbeat_interval.FromMilliseconds(self._engine.config.heartbeat_interval_ms)
        settings.lease_timeout.FromMilliseconds(self._engine.config.lease_timeout_ms)
        settings.max_message_bytes = worker_message_bytes(self._engine.config.max_payload_bytes)
        settings.ordered_commands = True  # WorkerCommands.apply_batch
        return settings


async def _converted(messages: Sequence[pb.WorkerCommand]) -> list[Command]:
    """The engine's commands for a batch, converted a slice at a time (a batch
    near its size limit takes tens of milliseconds): the next message is read
    only after, so batches keep their order."""
    commands: list[Command] = []
    for start in range(0, len(messages), _CONVERT_SLICE):
        if start:
            await asyncio.sleep(0)
        commands.extend(command_from_proto(c) for c in messages[start : start + _CONVERT_SLICE])
    return commands
