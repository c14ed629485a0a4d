"""``stepd limits list``: the flow-control limits and their queues."""

from __future__ import annotations

import argparse

from stepd.server.ops_cli.command import EXIT_OK, Connection, Verb
from stepd.server.ops_cli.output import enum_name, print_json, table, to_json
from stepd.v1 import operations_pb2


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def _list(connection: Connection, args: argparse.Namespace) -> int:
    limits: list[operations_pb2.FlowLimit] = []
    request = operations_pb2.ListFlowLimitsRequest(page_size=1000)
    while True:
        page = connection.call(connection.stub.ListFlowLimits, request)
        limits += page.limits
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if args.json:
        print_json([to_json(limit) for limit in limits])
        return EXIT_OK
    kinds = operations_pb2.FlowLimitKind.DESCRIPTOR
    rows = [
        (
            enum_name(kinds, limit.kind),
            limit.name,
            ",".join(limit.workflows) or "-",
            limit.setting,
            str(limit.active_runs),
            str(limit.waiting),
            str(limit.keys_waiting),
        )
        for limit in limits
    ]
    headers = ("KIND", "NAME", "WORKFLOWS", "SETTING", "ACTIVE", "WAITING", "KEYS WAITING")
    print(table(headers, rows))
    return EXIT_OK


VERBS = [
    Verb(
        "limits",
        "list",
        "list flow-control limits (concurrency, rate limits, debounce) and what waits",
        _no_arguments,
        _list,
    )
]
