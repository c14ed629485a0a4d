"""``stepd workers list``."""

from __future__ import annotations

import argparse

from stepd.server.ops_cli.command import EXIT_OK, Connection, Verb
from stepd.server.ops_cli.output import print_json, table, to_json, when
from stepd.v1 import operations_pb2


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def _workflows(worker: operations_pb2.WorkerInfo) -> str:
    return ",".join(f"{w.name}@{w.version}" for w in worker.workflows) or "-"


def _list(connection: Connection, args: argparse.Namespace) -> int:
    workers: list[operations_pb2.WorkerInfo] = []
    request = operations_pb2.ListWorkersRequest(page_size=1000)
    while True:
        page = connection.call(connection.stub.ListWorkers, request)
        workers += page.workers
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if args.json:
        print_json([to_json(worker) for worker in workers])
        return EXIT_OK
    rows = [
        (
            w.identity or w.worker_id,
            _workflows(w),
            str(w.capacity),
            str(w.runs_held),
            when(w.last_heartbeat_time),
            w.replica_id or "-",
            "draining" if w.draining else "serving",
        )
        for w in workers
    ]
    headers = ("IDENTITY", "WORKFLOWS", "CAPACITY", "HELD", "HEARTBEAT", "REPLICA", "STATE")
    print(table(headers, rows))
    return EXIT_OK


VERBS = [
    Verb(
        "workers",
        "list",
        "list connected workers: workflows served, capacity, runs held",
        _no_arguments,
        _list,
    )
]
