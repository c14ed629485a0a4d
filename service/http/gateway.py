"""The web UI's way into the API: ``POST /api/{service}/{method}`` with the
request message as JSON calls that RPC and answers its response as JSON.

The call goes to this server's own gRPC services over a private Unix socket
(a directory only the server's user can enter), so it passes the same
checks as any gRPC call: the same keys and roles decide, the same
validation answers, the same audit log records. The caller's API key comes
from ``Authorization: Bearer`` or from the UI's session cookie; a request
authenticated by the cookie must also carry the ``Stepd-UI`` header, which a
page on another site cannot send without this server's consent (no CORS is
offered), so a foreign page cannot act with a signed-in browser's key.

Only unary methods of the services in ``SERVICES`` are reachable; the worker
stream is not.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from stepd.server.http.access import request_key
from stepd.server.http.responses import error_answer
from stepd.v1 import admin_service_pb2, workflow_service_pb2

log = logging.getLogger("stepd.http")

SERVICES = {
    descriptor.full_name: descriptor
    for descriptor in (
        workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
        admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
    )
}
#: The header the UI sends with every call authenticated by the cookie.
UI_HEADER = "Stepd-UI"
#: The usual HTTP status for each gRPC code.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}
#: The longest an RPC called through the gateway may take, in seconds.
CALL_TIMEOUT = 70.0


class RpcGateway:
    """Calls this server's unary RPCs for HTTP callers (see the module docstring)."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, tuple[Any, type[Message]]] = {}

    def add_routes(self, app: web.Application) -> None:
        """Register ``POST /api/{service}/{method}``."""
        app.router.add_post("/api/{service}/{method}", self.call)

    async def close(self) -> None:
        """Close the channel to the gRPC services."""
        if self._channel is not None:
            await self._channel.close(None)

    async def call(self, request: web.Request) -> web.Response:
        """Run one RPC: the body is its request as JSON, the answer its response."""
        service, method = request.match_info["service"], request.match_info["method"]
        found = self._method(service, method)
        if found is None:
            return error_answer(404, f"no such method: {service[:60]}/{method[:60]}")
        key, from_cookie = request_key(request)
        if from_cookie and request.headers.get(UI_HEADER) != "1":
            return error_answer(403, f"calls signed in by cookie must send the {UI_HEADER} header")
        stub, request_class = found
        try:
            body = await request.text()
            message = json_format.Parse(body or "{}", request_class(), ignore_unknown_fields=False)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            return error_answer(400, f"the body is not a {request_class.DESCRIPTOR.name}: {exc}")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        try:
            response = await stub(message, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return error_answer(HTTP_STATUS.get(exc.code(), 500), exc.details() or exc.code().name)
        text = json_format.MessageToJson(
            response, preserving_proto_field_name=True, indent=None, ensure_ascii=False
        )
        return web.Response(text=text, content_type="application/json")

    def _method(self, service: str, method: str) -> tuple[Any, type[Message]] | None:
        name = f"/{service}/{method}"
        if name in self._calls:
            return self._calls[name]
        descriptor = SERVICES.get(service)
        found: MethodDescriptor | None = (
            descriptor.methods_by_name.get(method) if descriptor is not None else None
        )
        if found is None or found.client_streaming or found.server_streaming:
            return None
        request_class = message_factory.GetMessageClass(found.input_type)
        response_class = message_factory.GetMessageClass(found.output_type)
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self._target,
                options=[
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ],
            )
        stub = self._channel.unary_unary(
            name,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        self._calls[name] = (stub, request_class)
        return stub, request_class
