"""``stepd events publish``."""

from __future__ import annotations

import argparse

from stepd.server.ops_cli.command import EXIT_OK, Connection, Verb
from stepd.server.ops_cli.output import parse_json, print_json, to_json
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as pb


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--data", default="{}", metavar="JSON", help="the payload (JSON)")
    parser.add_argument("--id", metavar="EVENT_ID", help="publishing an id again does nothing")


def _publish(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.PublishEventRequest(
        name=args.name,
        payload=types_pb2.Payload(json=parse_json(args.data, "--data")),
        event_id=args.id or "",
    )
    response = connection.call(connection.stub.PublishEvent, request)
    if args.json:
        print_json(to_json(response))
        return EXIT_OK
    if response.already_published:
        print(f"event {response.event_id} was published before: nothing done")
        return EXIT_OK
    print(
        f"published event {response.event_id}: woke {len(response.woken_run_ids)} run(s), "
        f"started {len(response.started_run_ids)}"
    )
    for run_id in response.woken_run_ids:
        print(f"woke {run_id}")
    for run_id in response.started_run_ids:
        print(f"started {run_id}")
    return EXIT_OK


VERBS = [Verb("events", "publish", "publish an event", _publish_arguments, _publish)]
