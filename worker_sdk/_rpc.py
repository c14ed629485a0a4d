"""The SDK's gRPC edge: channel options and the one mapping of gRPC errors."""

from __future__ import annotations

import grpc

from stepd import errors

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Run tasks carry whole journals and list pages whole runs: no 4 MiB cap.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

_ERRORS: dict[grpc.StatusCode, type[errors.StepdError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.ServerUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
}


def sdk_error(error: grpc.aio.AioRpcError) -> errors.StepdError:
    """Translate a gRPC error into the SDK's error for its status code."""
    code = error.code()
    cls = _ERRORS.get(code, errors.StepdError)
    name = code.name if code is not None else "UNKNOWN"
    result = cls(error.details() or name)
    result.code = name
    return result
