"""Which RPC is being served, for the log (``current_rpc``), and its span.

``RpcContext.wrap`` wraps every method's handler once (``api/rpc_wrapping.py``):
it sets ``current_rpc`` for each call (the JSON log's ``rpc`` field) and,
when tracing is on (``tracing.py``), runs a unary call in a span.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import grpc

from stepd.server.api.rpc_wrapping import Handler

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = Iterable[tuple[str, str | bytes]] | None

_RPC: contextvars.ContextVar[str] = contextvars.ContextVar("stepd_rpc", default="")


def current_rpc() -> str:
    """The method of the call being handled ("Trigger"), "" outside a call."""
    return _RPC.get()


class Spans(Protocol):
    """Opens the span of one call (``tracing.RpcSpans``)."""

    def span(
        self, method: str, metadata: Metadata, context: Context
    ) -> contextlib.AbstractContextManager[Any]:
        """The call's span, current while it is open."""
        ...


class RpcContext:
    """Sets ``current_rpc`` for each call and opens its span (with ``spans``)."""

    def __init__(self, spans: Spans | None) -> None:
        self._spans = spans

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler``, run with ``current_rpc`` set and in its span (a ``Wrap``)."""
        name = method.rsplit("/", 1)[-1]
        spans = self._spans
        if handler.unary_unary is not None:
            inner = handler.unary_unary
            if spans is None:

                async def unary(request: Any, context: Context) -> Any:
                    _RPC.set(name)
                    return await inner(request, context)

            else:

                async def unary(request: Any, context: Context) -> Any:
                    _RPC.set(name)
                    with spans.span(method, context.invocation_metadata(), context):
                        return await inner(request, context)

            return handler._replace(unary_unary=unary)
        if handler.stream_stream is not None:
            streamed = handler.stream_stream

            # The worker's long-lived stream gets no span: its work shows as the
            # worker's run and step spans.
            async def stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
                _RPC.set(name)
                result = streamed(requests, context)
                if isinstance(result, AsyncIterator):
                    async for response in result:
                        yield response
                else:  # a handler that writes its responses
                    await result

            return handler._replace(stream_stream=stream)
        return handler
