"""``stepd keys create | list | revoke``: manage API keys.

Two ways, chosen by the flags:

- through a running server (``--address``, with an admin key in ``--api-key``
  or ``STEPD_API_KEY``): the AdminService RPCs. A revoked key stops working at
  once on that server (and within seconds on every replica), and the audit log
  names the admin key that made the change. The usual way.
- on the database directly (``--database``): for the first admin key, before
  the server starts, and to recover when no admin key is left. A SQLite file
  cannot be opened while a server uses it; on PostgreSQL the running replicas
  pick the change up within seconds.

A new key is printed once, alone on stdout (``KEY=$(stepd keys create ...)``);
only its hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime
from typing import Any

from stepd.server.domain import now_ms
from stepd.server.domain_keys import ApiKeyRecord, Role
from stepd.server.security.channel import ClientSettings, add_arguments, settings_from

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_parser(commands: Any, default_address: str) -> None:
    """Add ``stepd keys`` and its subcommands."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys", allow_abbrev=False)
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key (printed once)", allow_abbrev=False)
    create.add_argument("--name", required=True, help="who will use it, e.g. billing-service")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument(
        "--workflow",
        action="append",
        default=[],
        metavar="NAME",
        help="worker keys: a workflow it may serve (a name, or a prefix ending in *); repeat",
    )
    create.add_argument(
        "--expires", metavar="WHEN", help="30d, 12h, 90m, or a time like 2027-01-31T00:00:00Z"
    )
    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = actions.add_parser("revoke", help="revoke a key", allow_abbrev=False)
    revoke.add_argument("key_id", metavar="KEY_ID")
    for action in (create, listing, revoke):
        add_arguments(action, default_address)
        action.add_argument(
            "--database",
            metavar="DATABASE",
            help="work on this database directly instead of through a server "
            "(a SQLite file no server uses, or a PostgreSQL URL)",
        )
        action.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, default_address: str) -> int:
    """Run a ``stepd keys`` command; the exit code."""
    try:
        if args.database:
            records, key = asyncio.run(_on_database(args))
        else:
            records, key = _through_server(args, settings_from(args, default_address))
    except (ValueError, OSError) as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return 1
    except _RpcFailed as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return 1
    _print(args, records, key)
    return 0


def _expire_time(text: str | None) -> int | None:
    if not text:
        return None
    found = _DURATION.match(text.strip())
    if found:
        return now_ms() + int(found[1]) * _SECONDS[found[2]] * 1000
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--expires {text!r}: give 30d, 12h, 90m, 45s or an ISO time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


async def _on_database(args: argparse.Namespace) -> tuple[list[ApiKeyRecord], str | None]:
    from stepd.server.engine.errors import EngineError
    from stepd.server.security.key_admin import KeyAdmin
    from stepd.server.store import DatabaseInUseError, open_store

    try:
        store = await open_store(args.database)
    except DatabaseInUseError as exc:
        raise ValueError(
            f"{exc}; manage keys through the running server instead "
            "(--address and an admin key in --api-key)"
        ) from None
    try:
        admin = KeyAdmin(store)
        if args.keys_command == "create":
            record, key = await admin.create(
                args.name, Role(args.role), args.workflow, _expire_time(args.expires)
            )
            return [record], key
        if args.keys_command == "revoke":
            return [await admin.revoke(args.key_id)], None
        records, _ = await admin.list_page(1000, None, args.all)
        return records, None
    except EngineError as exc:
        raise ValueError(str(exc)) from None
    finally:
        await store.close()


class _RpcFailed(Exception):
    """An AdminService call failed; the message says how."""


def _through_server(
    args: argparse.Namespace, settings: ClientSettings
) -> tuple[list[ApiKeyRecord], str | None]:
    import grpc

    from stepd.v1 import admin_service_pb2 as pb
    from stepd.v1 import admin_service_pb2_grpc

    def record(key: pb.ApiKey) -> ApiKeyRecord:
        return ApiKeyRecord(
            key_id=key.key_id,
            name=key.name,
            role=Role(pb.ApiKeyRole.Name(key.role).removeprefix("API_KEY_ROLE_").lower()),
            workflows=tuple(key.workflows),
            secret_hash="",
            create_time=key.create_time.ToMilliseconds(),
            expire_time=key.expire_time.ToMilliseconds() if key.HasField("expire_time") else None,
            revoke_time=key.revoke_time.ToMilliseconds() if key.HasField("revoke_time") else None,
            created_by=key.created_by,
        )

    with settings.channel() as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        md = settings.metadata
        try:
            if args.keys_command == "create":
                request = pb.CreateApiKeyRequest(
                    name=args.name,
                    role=pb.ApiKeyRole.Value(f"API_KEY_ROLE_{args.role.upper()}"),
                    workflows=args.workflow,
                )
                expire = _expire_time(args.expires)
                if expire is not None:
                    request.expire_time.FromMilliseconds(expire)
                created = stub.CreateApiKey(request, metadata=md, timeout=30)
                return [record(created.key)], created.secret
            if args.keys_command == "revoke":
                revoked = stub.RevokeApiKey(
                    pb.RevokeApiKeyRequest(key_id=args.key_id), metadata=md, timeout=30
                )
                return [record(revoked.key)], None
            records: list[ApiKeyRecord] = []
            token = ""
            while True:
                page = stub.ListApiKeys(
                    pb.ListApiKeysRequest(page_token=token, show_revoked=args.all),
                    metadata=md,
                    timeout=30,
                )
                records += [record(k) for k in page.keys]
                token = page.next_page_token
                if not token:
                    return records, None
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details()
            raise _RpcFailed(f"{settings.address}: {code.name}: {details}") from None


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "role": record.role.value,
        "workflows": list(record.workflows),
        "create_time": _when(record.create_time),
        "expire_time": _when(record.expire_time) if record.expire_time else None,
        "revoke_time": _when(record.revoke_time) if record.revoke_time else None,
        "created_by": record.created_by or None,
    }


def _print(args: argparse.Namespace, records: list[ApiKeyRecord], key: str | None) -> None:
    if args.json:
        if args.keys_command == "list":
            print(json.dumps([_as_json(r) for r in records], indent=2))
        else:
            document = _as_json(records[0])
            if key is not None:
                document["key"] = key
            print(json.dumps(document, indent=2))
        return
    if args.keys_command == "create":
        record = records[0]
        print(key)
        print(
            f"created API key {record.key_id} ({record.name}, role {record.role.value}); "
            "this is the only time it is shown: store it now",
            file=sys.stderr,
        )
        return
    if args.keys_command == "revoke":
        print(f"revoked API key {records[0].key_id} at {_when(records[0].revoke_time)}")
        return
    rows = [("KEY_ID", "NAME", "ROLE", "WORKFLOWS", "CREATED", "EXPIRES", "REVOKED")]
    rows += [
        (
            r.key_id,
            r.name,
            r.role.value,
            ",".join(r.workflows) or "-",
            _when(r.create_time),
            _when(r.expire_time),
            _when(r.revoke_time),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
