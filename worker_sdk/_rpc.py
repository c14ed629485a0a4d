"""The SDK's gRPC edge: how to reach the server and the one mapping of gRPC errors.

``ConnectionSettings`` is the one place for connection settings: a ``Client`` holds
them, and a ``Worker`` made with that client connects with the same ones. Both
open their channels with ``ConnectionSettings.open_channel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from stepd import errors

Req = TypeVar("Req")
Resp = TypeVar("Resp")

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Run tasks carry whole journals and list pages whole runs: no 4 MiB cap.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How the SDK reaches a stepd server."""

    address: str
    """The server's address: ``host:port``, or any gRPC target
    (``ipv4:10.0.0.1:50051,10.0.0.2:50051`` for several replicas)."""

    def open_channel(self, options: Sequence[tuple[str, int]] = ()) -> grpc.aio.Channel:
        """Open a gRPC channel to the server (``options`` added to the SDK's own)."""
        return grpc.aio.insecure_channel(self.address, options=[*CHANNEL_OPTIONS, *options])


_ERRORS: dict[grpc.StatusCode, type[errors.StepdError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.ServerUnavailableError,
}


def sdk_error(error: grpc.aio.AioRpcError) -> errors.StepdError:
    """Translate a gRPC error into the SDK's error for its status code."""
    code = error.code()
    cls = _ERRORS.get(code, errors.StepdError)
    name = code.name if code is not None else "UNKNOWN"
    result = cls(error.details() or name)
    result.code = name
    return result


async def call(
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    rpc_timeout: float | None = None,
) -> Resp:
    """Make one unary call; a gRPC error is raised as the SDK's error."""
    try:
        return await method(request, timeout=rpc_timeout)
    except grpc.aio.AioRpcError as exc:
        raise sdk_error(exc) from exc
