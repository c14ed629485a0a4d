"""Registers a servicer's RPCs with a server, decoding requests without raising.

The generated ``add_..._to_server`` functions decode requests with
``FromString``: bytes that are not the request message then make grpc answer
UNKNOWN (naming a Python exception) and log a traceback. The handlers built
here decode with ``errors.decoder`` instead, so each servicer method receives
either its message or ``errors.Undecodable`` and answers INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from stepd.server.api.errors import decoder
from stepd.server.api.rpc_wrapping import WrappingServer
from stepd.server.engine.errors import EngineError


def add_service(
    server: WrappingServer,
    servicer: Any,
    service: ServiceDescriptor,
    prechecks: Mapping[str, Callable[[bytes], EngineError | None]] | None = None,
) -> None:
    """Serve every method of ``service`` with the same-named method of ``servicer``
    (wrapped as ``server`` wraps handlers); ``prechecks`` (by method name) may
    refuse a request's bytes before decoding."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        precheck = (prechecks or {}).get(method.name)
        # A unary request with a NUL in a string is refused (api/strings.py); a
        # worker's stream messages are checked where they are used.
        unary = not method.client_streaming
        options: dict[str, Any] = {
            "request_deserializer": decoder(request_class, precheck, refuse_nul=unary),
            "response_serializer": response_class.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, **options)
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **options)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behaviour, **options)
        else:  # pragma: no cover - the contract has no such RPC
            raise NotImplementedError(f"{method.full_name}: client streams are not served")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Registered handlers skip the generic lookup per call (grpc >= 1.62).
    server.add_registered_method_handlers(service.full_name, handlers)
