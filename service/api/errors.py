"""The one place errors become gRPC statuses, and the log lines they leave.

A client's mistake (an engine error, or bytes that are not the request
message) gets its documented code and a short message, and leaves at most one
DEBUG line in the log. Storage that cannot be used now (``StoreUnavailableError``)
gets UNAVAILABLE, which callers retry, and one WARNING line every few seconds
at most; a value the database refused (``StoreValueError``: a check the edge
lacks) gets INVALID_ARGUMENT and a WARNING line. Anything else is a fault of
the server: the caller gets INTERNAL and the log gets the traceback, naming
the RPC and the run.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from stepd.server.api.strings import check_strings
from stepd.server.engine import errors
from stepd.server.store.errors import StoreError, StoreUnavailableError

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
#: The longest error message sent to a caller (longer ones are cut).
MAX_MESSAGE_CHARS = 1000
#: What a caller is told while storage cannot be used.
UNAVAILABLE_MESSAGE = "the server's storage is unavailable; retry shortly"
#: At most one log line per this many seconds about unavailable storage.
UNAVAILABLE_LOG_SECONDS = 5.0
_last_unavailable_log = [0.0]

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]


class Undecodable:
    """Stands for request bytes that do not decode as the expected message."""

    __slots__ = ("refused", "type_name")

    def __init__(self, type_name: str, refused: errors.EngineError | None = None) -> None:
        self.type_name = type_name
        self.refused = refused

    def error(self) -> errors.EngineError:
        """The error the caller gets for it."""
        if self.refused is not None:
            return self.refused
        return errors.InvalidArgument(
            f"the request is not a valid {self.type_name}: its bytes do not decode"
        )


def decoder(
    message_class: type[Message],
    precheck: Callable[[bytes], errors.EngineError | None] | None = None,
    *,
    refuse_nul: bool = False,
) -> Callable[[bytes], Message | Undecodable]:
    """A request deserializer that never raises: bytes that do not decode become
    ``Undecodable`` (grpc would answer UNKNOWN and log a traceback). ``precheck``
    may refuse the bytes before they are decoded (a message too costly to decode).
    With ``refuse_nul``, a request with a NUL in a string is refused
    (``strings.py``); its strings are looked at only when its bytes hold a zero
    byte (a NUL character is one; most requests have none)."""
    type_name = message_class.DESCRIPTOR.full_name
    parse = message_class.FromString

    def decode(raw: bytes) -> Message | Undecodable:
        if precheck is not None:
            refused = precheck(raw)
            if refused is not None:
                return Undecodable(type_name, refused)
        try:
            message = parse(raw)
        except (DecodeError, ValueError, RuntimeError):
            return Undecodable(type_name)
        if refuse_nul and b"\x00" in raw:
            try:
                check_strings(message)
            except errors.InvalidArgument as exc:
                return Undecodable(type_name, exc)
        return message

    return decode


def status_code(exc: errors.EngineError) -> grpc.StatusCode:
    """The gRPC code for an engine error."""
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def client_message(exc: errors.EngineError) -> str:
    """The message a caller gets for an engine error (at most MAX_MESSAGE_CHARS)."""
    text = str(exc)
    if len(text) > MAX_MESSAGE_CHARS:
        return text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def client_status(exc: errors.EngineError, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The status of a client's mistake, logged as one DEBUG line."""
    code, message = status_code(exc), client_message(exc)
    log.debug("%s: %s: %s", rpc, code.name, message)
    return code, message


def store_status(exc: StoreError, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The status of a database failure: UNAVAILABLE (retry) when storage cannot
    be used now, INVALID_ARGUMENT when the database refused a value."""
    if isinstance(exc, StoreUnavailableError):
        now = time.monotonic()
        if now - _last_unavailable_log[0] >= UNAVAILABLE_LOG_SECONDS:
            _last_unavailable_log[0] = now
            log.warning("%s: storage unavailable: %s", rpc, exc)
        return grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE
    log.warning("%s: the database refused a value of the request: %s", rpc, exc)
    return grpc.StatusCode.INVALID_ARGUMENT, "the request holds a value the database cannot store"


def server_fault(rpc: str, request: object) -> tuple[grpc.StatusCode, str]:
    """The status of a fault inside the server (call from an ``except`` block):
    the traceback goes to the log, naming the RPC and the run when known."""
    run_id = getattr(request, "run_id", "")
    where = f" (run {run_id[:64]})" if isinstance(run_id, str) and run_id else ""
    log.exception("%s failed%s", rpc, where)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def maps_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Answer a unary RPC: undecodable bytes (and strings with a NUL, refused by
    the ``decoder``) and engine errors become their status codes, anything else
    INTERNAL (the server log has the details)."""
    rpc = handler.__name__

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Request, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            return await handler(self, request, context)
        except errors.EngineError as exc:
            code, message = client_status(exc, rpc)
        except StoreError as exc:
            code, message = store_status(exc, rpc)
        except Exception:
            code, message = server_fault(rpc, request)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    return wrapper
