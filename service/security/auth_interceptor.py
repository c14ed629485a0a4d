"""The one place that decides who may call what.

``Authorization.wrap`` wraps each method's handler once, where it is
registered (``api/rpc_wrapping.py``); the wrapper reads the call's metadata.
For every call: a method in ``roles.OPEN_METHODS`` (health) passes; any other
needs ``authorization: Bearer <API key>`` metadata naming a usable key
(else ``UNAUTHENTICATED``) whose role has the right ``roles.METHOD_RIGHTS``
names for the method (else ``PERMISSION_DENIED``, naming the right). A method
in neither table is refused (fail closed).

An allowed call runs with its principal in ``current_principal()``, so that
handlers can record who acted (a run's history keeps the key id of a cancel,
a signal, a hook execution, an event). On the worker stream, the hello may
name only workflows the key may serve, and the stream is cut when the key is
revoked. Changes to keys, schedules and versions are written to the audit log.

Without API keys (``KeyRing`` None: a server open on loopback), calls pass
unchecked and only the audit log is written.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

from stepd.server.api.rpc_wrapping import Handler, behaviour, with_behaviour
from stepd.server.security import audit
from stepd.server.security.keyring import AuthenticationError, KeyRing
from stepd.server.security.principal import set_principal
from stepd.server.security.roles import (
    METHOD_RIGHTS,
    OPEN_METHODS,
    WORKER_STREAM,
    Principal,
    Right,
)

log = logging.getLogger("stepd.security")

Context = grpc.aio.ServicerContext[Any, Any]

_BEARER = "bearer "


class Authorization:
    """Authenticates and authorizes every call (see the module docstring)."""

    def __init__(self, ring: KeyRing | None) -> None:
        self._ring = ring

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler``, behind the checks ``method`` needs (a ``Wrap``)."""
        ring = self._ring
        if ring is None:
            return _audited(handler, None, method) if method in audit.AUDITED else handler
        if method in OPEN_METHODS:
            return handler
        right = METHOD_RIGHTS.get(method)
        if right is None:
            message = f"{method} is not open to API keys"
            return _refuse(handler, lambda: (grpc.StatusCode.PERMISSION_DENIED, message))

        async def principal_of(context: Context) -> Principal:
            """The caller's principal; aborts the call when it may not make it."""
            key = _bearer(context.invocation_metadata())
            if key is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs an API key: send the metadata 'authorization: Bearer <key>'",
                )
            try:
                principal = await ring.authenticate(key)
            except AuthenticationError as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            if right not in principal.rights:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, _lacks(principal, right))
            return principal

        if method == WORKER_STREAM:
            return _worker_stream(handler, principal_of, ring)
        return _as(handler, principal_of, method if method in audit.AUDITED else None)


def _lacks(principal: Principal, right: Right) -> str:
    return (
        f"API key {principal.key_id} (role {principal.role.value}) lacks the right "
        f"{right.value!r} that this call needs"
    )


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip()
            return None
    return None


def _refuse(handler: Handler, status: Callable[[], tuple[grpc.StatusCode, str]]) -> Handler:
    """A handler of the same kind that answers ``status()`` at once."""
    kind, _ = behaviour(handler)

    async def refuse(request: Any, context: Context) -> None:
        await context.abort(*status())

    return with_behaviour(handler, kind, refuse)._replace(request_deserializer=None)


PrincipalOf = Callable[[Context], Awaitable[Principal]]


def _as(handler: Handler, principal_of: PrincipalOf, audited: str | None) -> Handler:
    """The handler, run with the caller's principal as the current principal
    (and, for an ``audited`` method, writing the audit log when it succeeds)."""
    # A unary request is decoded only once its caller is known to be allowed:
    # grpc hands over the bytes, and the key is checked before they are parsed.
    decode: Callable[[bytes], Any] = handler.request_deserializer or _as_is
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(raw: bytes, context: Context) -> Any:
            principal = await principal_of(context)
            set_principal(principal)
            request = decode(raw)
            response = await inner(request, context)
            if audited is not None:
                audit.record(audited, principal.key_id, request, response)
            return response

        return handler._replace(unary_unary=unary, request_deserializer=None)
    if handler.unary_stream is not None:
        watched = handler.unary_stream

        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            set_principal(await principal_of(context))
            async for response in _responses(watched(decode(raw), context)):
                yield response

        return handler._replace(unary_stream=unary_stream, request_deserializer=None)
    if handler.stream_stream is not None:
        streamed = handler.stream_stream

        async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            set_principal(await principal_of(context))
            async for response in _responses(streamed(requests, context)):
                yield response

        return handler._replace(stream_stream=stream)
    raise TypeError("stepd serves unary, server-streaming and bidirectional methods only")


def _as_is(raw: bytes) -> bytes:
    return raw


def _audited(handler: Handler, principal: Principal | None, method: str) -> Handler:
    """The handler, run as ``principal``, writing the audit log when it succeeds."""
    inner = handler.unary_unary
    key_id = principal.key_id if principal is not None else ""

    async def unary(request: Any, context: Context) -> Any:
        set_principal(principal)
        response = await inner(request, context)
        audit.record(method, key_id, request, response)
        return response

    return handler._replace(unary_unary=unary)


def _worker_stream(handler: Handler, principal_of: PrincipalOf, ring: KeyRing) -> Handler:
    """PollTask, for a key that may serve: the hello may name only the key's
    workflows, and revoking the key ends the stream."""
    inner = handler.stream_stream

    async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        principal = await principal_of(context)
        set_principal(principal)

        async def check_hello(request: Any) -> None:
            if request.WhichOneof("message") != "hello":
                return  # the servicer refuses it
            names = sorted({w.name for w in request.hello.workflows})
            refused = [name for name in names if not principal.may_serve(name)]
            if refused:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"API key {principal.key_id} may not serve {', '.join(refused)} "
                    f"(it may serve: {', '.join(principal.workflows) or 'nothing'})",
                )
            log.info(
                "worker stream opened with API key %s (%s) for %s",
                principal.key_id,
                principal.name,
                ", ".join(names),
            )

        guard = ring.guard(requests, principal, check_hello)
        try:
            async for response in inner(guard, context):
                yield response
        finally:
            ring.release(guard)

    return handler._replace(stream_stream=stream)


async def _responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming handler, whether it yields them or writes them."""
    if isinstance(result, AsyncIterator):
        async for response in result:
            yield response
    else:
        await result
