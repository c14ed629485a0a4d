"""The one place engine errors become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from stepd.server.engine import errors

log = logging.getLogger("stepd.api")

CODES: dict[type[errors.EngineError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]


def status_code(exc: errors.EngineError) -> grpc.StatusCode:
    """The gRPC code for an engine error."""
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def maps_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn engine errors into gRPC statuses, and anything else into INTERNAL
    with a message that hides internals (the server log has the details)."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        try:
            return await handler(self, request, context)
        except errors.EngineError as exc:
            await context.abort(status_code(exc), str(exc))
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper
