"""AdminService messages to and from the server's plain data (keys, versions)."""

from __future__ import annotations

import base64

from stepd.server.api.convert import timestamp
from stepd.server.domain_keys import ApiKeyRecord, Role
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.versions import VersionView
from stepd.v1 import admin_service_pb2 as pb

ROLE_TO_PROTO: dict[Role, pb.ApiKeyRole.ValueType] = {
    Role.ADMIN: pb.API_KEY_ROLE_ADMIN,
    Role.OPERATOR: pb.API_KEY_ROLE_OPERATOR,
    Role.CLIENT: pb.API_KEY_ROLE_CLIENT,
    Role.READER: pb.API_KEY_ROLE_READER,
    Role.WORKER: pb.API_KEY_ROLE_WORKER,
}
ROLE_FROM_PROTO = {value: role for role, value in ROLE_TO_PROTO.items()}


def role_from_proto(value: int) -> Role | None:
    """The role of an ApiKeyRole value (None when unset); INVALID_ARGUMENT when unknown."""
    if value == pb.API_KEY_ROLE_UNSPECIFIED:
        return None
    role: Role | None = ROLE_FROM_PROTO.get(value)  # type: ignore[call-overload]
    if role is None:
        raise InvalidArgument(f"role {value} is not a known ApiKeyRole")
    return role


def key_to_proto(record: ApiKeyRecord) -> pb.ApiKey:
    """A stored key's description (never its hash)."""
    return pb.ApiKey(
        key_id=record.key_id,
        name=record.name,
        role=ROLE_TO_PROTO[record.role],
        workflows=list(record.workflows),
        create_time=timestamp(record.create_time),
        expire_time=timestamp(record.expire_time),
        revoke_time=timestamp(record.revoke_time),
        created_by=record.created_by,
    )


def version_to_proto(view: VersionView) -> pb.WorkflowVersionInfo:
    """One version as operators see it."""
    return pb.WorkflowVersionInfo(
        workflow_name=view.name,
        version=view.version,
        register_time=timestamp(view.first_seen),
        current=view.current,
        pinned=view.pinned,
        connected_workers=view.connected_workers,
        retire_time=timestamp(view.retire_time),
    )


def encode_cursor(*parts: str) -> str:
    """An opaque page token holding the last item's sort key."""
    return base64.urlsafe_b64encode("\0".join(parts).encode()).decode()


def decode_cursor(token: str, count: int) -> tuple[str, ...] | None:
    """The sort key in a page token (None for an empty token)."""
    if not token:
        return None
    try:
        parts = tuple(base64.urlsafe_b64decode(token.encode()).decode().split("\0"))
    except ValueError:
        parts = ()
    if len(parts) != count:
        raise InvalidArgument("page_token is malformed; pass a next_page_token unchanged")
    return parts
