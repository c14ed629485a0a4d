"""Wrapping each RPC's behaviour once, when it is registered, instead of per call.

A grpc.aio server interceptor runs for every call: it awaits the method
look-up and returns a handler, usually a fresh wrapper (three interceptors
cost about a tenth of a millisecond per call). What stepd wraps around its
handlers (RPC metrics, the RPC's context and span, API-key checks) depends
only on the method, or reads the call's metadata from its context, so each
method's handler is wrapped once (a ``Wrap``) as it is registered through a
``WrappingServer``, and grpc serves the calls without an interceptor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

#: A grpc method handler (a named tuple; grpc's type stubs describe only the sync kind).
Handler = Any
#: Wraps the handler of one method, named in full ("/stepd.v1.WorkflowService/Trigger").
Wrap = Callable[[str, Handler], Handler]
if TYPE_CHECKING:
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:  # not subscriptable at run time
    GenericHandler = grpc.GenericRpcHandler
#: The four kinds of behaviour a handler has (exactly one is set).
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def behaviour(handler: Handler) -> tuple[str, Callable[..., Any]]:
    """The kind of ``handler`` (one of ``KINDS``) and its behaviour."""
    for kind in KINDS:
        found = getattr(handler, kind)
        if found is not None:
            return kind, found
    raise TypeError("a method handler without a behaviour")


def with_behaviour(handler: Handler, kind: str, new: Callable[..., Any]) -> Handler:
    """``handler`` with ``new`` as its behaviour of ``kind``."""
    return handler._replace(**{kind: new})


def compose(*wraps: Wrap) -> Wrap:
    """One wrap applying ``wraps``, the first outermost."""

    def wrap(method: str, handler: Handler) -> Handler:
        for one in reversed(wraps):
            handler = one(method, handler)
        return handler

    return wrap


class WrappedGenericHandler(GenericHandler):
    """A generic handler whose handlers are wrapped, once per method."""

    def __init__(self, inner: GenericHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._wrap(method, handler))
        return known[1]


class WrappingServer:
    """Stands for a grpc.aio server where services are added (``add_service``,
    the generated ``add_*_to_server`` functions), wrapping every handler."""

    def __init__(self, server: grpc.aio.Server, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[GenericHandler]) -> None:
        """Add generic handlers; their handlers are wrapped at their first call."""
        self._server.add_generic_rpc_handlers(
            tuple(WrappedGenericHandler(handler, self._wrap) for handler in generic_handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        """Add a service's handlers by method name, wrapped now."""
        wrapped = {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]
