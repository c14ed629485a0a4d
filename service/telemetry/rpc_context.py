"""Which RPC is being served, for the log (``current_rpc``), and its span.

``RpcContextInterceptor`` wraps every method: it sets ``current_rpc`` for the
call (the JSON log's ``rpc`` field) and, when tracing is on (``tracing.py``),
runs the call in a span.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
#: A grpc method handler (a named tuple; grpc's type stubs describe only the sync kind).
Handler = Any
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
Metadata = Sequence[tuple[str, str | bytes]] | None

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


class RpcContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # stubs: no params
    """Sets ``current_rpc`` for each call and opens its span (with ``spans``)."""

    def __init__(self, spans: Spans | None) -> None:
        self._spans = spans

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return None
        full: str = details.method
        name = full.rsplit("/", 1)[-1]
        metadata = details.invocation_metadata
        spans = self._spans
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                _RPC.set(name)
                if spans is None:
                    return await inner(request, context)
                with spans.span(full, metadata, context):
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
