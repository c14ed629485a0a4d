"""stepd.v1.AdminService: API keys and workflow versions. Decode, call, encode."""

from __future__ import annotations

from typing import Any

import grpc

from stepd.server.api.convert import optional_ms
from stepd.server.api.convert_admin import (
    decode_cursor,
    encode_cursor,
    key_to_proto,
    role_from_proto,
    version_to_proto,
)
from stepd.server.api.errors import maps_errors
from stepd.server.engine.versions import VersionAdmin
from stepd.server.security.key_admin import KeyAdmin
from stepd.server.security.principal import current_key_id
from stepd.v1 import admin_service_pb2 as pb
from stepd.v1 import admin_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    """The operators' API."""

    def __init__(self, keys: KeyAdmin, versions: VersionAdmin) -> None:
        self._keys = keys
        self._versions = versions

    # -- API keys -------------------------------------------------------------

    @maps_errors
    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        record, key = await self._keys.create(
            request.name,
            role_from_proto(request.role),
            list(request.workflows),
            optional_ms(request, "expire_time", "expire_time"),
            created_by=current_key_id(),
        )
        return pb.CreateApiKeyResponse(key=key_to_proto(record), secret=key)

    @maps_errors
    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        after = decode_cursor(request.page_token, 1)
        records, last = await self._keys.list_page(
            request.page_size, after[0] if after else None, request.show_revoked
        )
        return pb.ListApiKeysResponse(
            keys=[key_to_proto(r) for r in records],
            next_page_token=encode_cursor(last) if last is not None else "",
        )

    @maps_errors
    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        record = await self._keys.revoke(request.key_id)
        return pb.RevokeApiKeyResponse(key=key_to_proto(record))

    # -- workflow versions ------------------------------------------------------

    @maps_errors
    async def ListWorkflowVersions(
        self, request: pb.ListWorkflowVersionsRequest, context: Context
    ) -> pb.ListWorkflowVersionsResponse:
        after = decode_cursor(request.page_token, 2)
        views, last = self._versions.list_page(
            request.workflow_name, request.page_size, (after[0], after[1]) if after else None
        )
        return pb.ListWorkflowVersionsResponse(
            versions=[version_to_proto(v) for v in views],
            next_page_token=encode_cursor(*last) if last is not None else "",
        )

    @maps_errors
    async def PinWorkflowVersion(
        self, request: pb.PinWorkflowVersionRequest, context: Context
    ) -> pb.PinWorkflowVersionResponse:
        view = await self._versions.pin(request.workflow_name, request.version)
        return pb.PinWorkflowVersionResponse(version=version_to_proto(view))

    @maps_errors
    async def UnpinWorkflowVersion(
        self, request: pb.UnpinWorkflowVersionRequest, context: Context
    ) -> pb.UnpinWorkflowVersionResponse:
        had, current = await self._versions.unpin(request.workflow_name)
        return pb.UnpinWorkflowVersionResponse(was_pinned=had, current_version=current)

    @maps_errors
    async def RetireWorkflowVersion(
        self, request: pb.RetireWorkflowVersionRequest, context: Context
    ) -> pb.RetireWorkflowVersionResponse:
        view, already = await self._versions.retire(request.workflow_name, request.version)
        return pb.RetireWorkflowVersionResponse(
            version=version_to_proto(view), already_retired=already
        )
