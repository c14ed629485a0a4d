"""Counts every RPC by method and status code, and times it.

The outermost wrap of every method's handler (``api/rpc_wrapping.py``), so
that calls refused by the API-key checks are counted too. Only methods the
server serves are counted (an unknown method gets UNIMPLEMENTED from grpc
before any handler), so the ``method`` label cannot be grown by callers.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from stepd.server.api.rpc_wrapping import Handler, behaviour, with_behaviour

Context = grpc.aio.ServicerContext[Any, Any]
_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


class RpcMetrics:
    """Counts calls in ``calls`` (labels method, code) and times them in ``seconds``."""

    def __init__(self, calls: Counter, seconds: Histogram) -> None:
        self._calls = calls
        self._seconds = seconds
        # One observer per method (its labelled children made once).
        self._observers: dict[str, _Observer] = {}

    def wrap(self, method: str, handler: Handler) -> Handler:
        """``handler``, counted and timed (a ``Wrap``)."""
        name = method.rsplit("/", 1)[-1]
        observe = self._observers.get(name)
        if observe is None:
            observe = self._observers[name] = _Observer(name, self._calls, self._seconds)
        kind, inner = behaviour(handler)
        if kind in ("unary_unary", "stream_unary"):
            return with_behaviour(handler, kind, observe.unary(inner))
        return with_behaviour(handler, kind, observe.stream(inner))


class _Observer:
    def __init__(self, method: str, calls: Counter, seconds: Histogram) -> None:
        self._method = method
        self._calls = calls
        self._seconds = seconds.labels(method)
        self._by_code: dict[str, Any] = {}

    def unary(self, inner: Callable[[Any, Context], Awaitable[Any]]) -> Any:
        async def call(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                response = await inner(request, context)
                failed = False
                return response
            finally:
                self._done(context, started, failed)

        return call

    def stream(self, inner: Callable[[Any, Context], Any]) -> Any:
        if not inspect.isasyncgenfunction(inner):
            # Writes with context.write, or refuses at once (the API-key
            # checks): keep it a coroutine, as grpc expects of such a handler.
            return self.unary(inner)

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failed = True
            try:
                async for response in inner(request, context):
                    yield response
                failed = False
            finally:
                self._done(context, started, failed)

        return call

    def _done(self, context: Context, started: float, failed: bool) -> None:
        self._seconds.observe(time.perf_counter() - started)
        code = _code_name(context, failed)
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._calls.labels(self._method, code)
        counter.inc()


def _code_name(context: Context, failed: bool) -> str:
    """The call's status code: the one set on the context, else OK, or UNKNOWN
    when the handler raised without setting one (CANCELLED when the caller left)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code in _CODE_NAMES:
        return _CODE_NAMES[code]
    if failed:
        return "CANCELLED" if context.cancelled() else "UNKNOWN"
    return "OK"
