"""How engine errors and answers look over HTTP: JSON bodies with one status each."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stepd.server.engine import errors

#: The HTTP status for each engine error (the gRPC code's usual HTTP mapping).
STATUSES: dict[type[errors.EngineError], int] = {
    errors.InvalidArgument: 400,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409,
    errors.ResourceExhausted: 413,
    errors.Unavailable: 503,
    errors.Unimplemented: 501,
}
MAX_MESSAGE_CHARS = 500


def json_answer(body: dict[str, Any], status: int = 200) -> web.Response:
    """A JSON response."""
    return web.json_response(body, status=status)


def error_answer(status: int, message: str) -> web.Response:
    """A JSON error: ``{"error": message}`` (cut to MAX_MESSAGE_CHARS)."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return web.json_response({"error": message}, status=status)


def engine_error_answer(exc: errors.EngineError) -> web.Response:
    """The response for an engine error."""
    for cls in type(exc).__mro__:
        if cls in STATUSES:
            return error_answer(STATUSES[cls], str(exc))
    return error_answer(500, "internal error; see the server log")
