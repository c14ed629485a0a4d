"""``stepd hooks execute``."""

from __future__ import annotations

import argparse

from stepd.server.ops_cli.command import EXIT_OK, Connection, Verb
from stepd.server.ops_cli.output import parse_json, print_json
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as pb


def _execute_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token", metavar="TOKEN", help="the hook's token (stepd runs show)")
    parser.add_argument("--data", default="null", metavar="JSON", help="the payload (JSON)")


def _execute(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.ExecuteHookRequest(
        token=args.token, payload=types_pb2.Payload(json=parse_json(args.data, "--data"))
    )
    response = connection.call(connection.stub.ExecuteHook, request)
    if args.json:
        print_json({"run_id": response.run_id})
    else:
        print(f"executed the hook of run {response.run_id}")
    return EXIT_OK


VERBS = [
    Verb(
        "hooks",
        "execute",
        "execute a hook: resume the run waiting on it",
        _execute_arguments,
        _execute,
    )
]
