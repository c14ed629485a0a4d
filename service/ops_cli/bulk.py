"""Bulk actions by filter (``runs cancel --workflow ...``, ``runs retry --status ...``):
count first, confirm, then act one batch per call with a progress line per batch.

Safe to interrupt and repeat: the server commits each batch run by run and a
run it changed no longer matches, so running the command again changes only
what is left (and nothing when nothing is left).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepd.server.ops_cli.command import (
    EXIT_FAILED_CALL,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Connection,
)
from stepd.server.ops_cli.output import note, print_json
from stepd.server.ops_cli.runs import FILTERS, filter_request
from stepd.v1 import workflow_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class Action:
    """A bulk action: its words and the call that does one batch."""

    verb: str  # "cancel"
    done: str  # "cancelled"
    #: (connection, filter, dry_run, batch_size, page_token, reason) -> response
    batch: Callable[[Connection, pb.ListRunsRequest, bool, int, str, str], Any]


def _cancel_batch(
    connection: Connection,
    filter_: pb.ListRunsRequest,
    dry_run: bool,
    batch_size: int,
    page_token: str,
    reason: str,
) -> pb.CancelRunsResponse:
    request = pb.CancelRunsRequest(
        reason=reason, dry_run=dry_run, batch_size=batch_size, page_token=page_token
    )
    request.filter.CopyFrom(filter_)
    return connection.call(connection.stub.CancelRuns, request)


def _retry_batch(
    connection: Connection,
    filter_: pb.ListRunsRequest,
    dry_run: bool,
    batch_size: int,
    page_token: str,
    reason: str,
) -> pb.RetryRunsResponse:
    request = pb.RetryRunsRequest(
        reason=reason, dry_run=dry_run, batch_size=batch_size, page_token=page_token
    )
    request.filter.CopyFrom(filter_)
    return connection.call(connection.stub.RetryRuns, request)


CANCEL = Action("cancel", "cancelled", _cancel_batch)
RETRY = Action("retry", "retried", _retry_batch)


def bulk_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of a bulk action (the filters are runs.filter_arguments)."""
    parser.add_argument(
        "--dry-run", action="store_true", help="with a filter: count the runs, change nothing"
    )
    parser.add_argument(
        "--yes", action="store_true", help="with a filter: act without asking for confirmation"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        metavar="N",
        help="with a filter: runs per call (default 500, at most 1000)",
    )


def has_filter(args: argparse.Namespace) -> bool:
    """Whether any filter flag was given."""
    return any(getattr(args, name) for name in FILTERS)


def _confirmed(action: Action, count: int) -> bool:
    """Ask on the terminal; False unless the answer is yes."""
    print(f"{action.verb} {count} run(s)? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def run_bulk(connection: Connection, args: argparse.Namespace, action: Action) -> int:
    """Count, confirm, then act batch by batch; the exit code."""
    if not 1 <= args.batch_size <= 1000:
        raise CommandError("--batch-size must be between 1 and 1000", EXIT_USAGE)
    filter_ = filter_request(args)
    reason = args.reason or ""
    counted = action.batch(connection, filter_, True, args.batch_size, "", reason).matched
    if args.dry_run or counted == 0:
        if args.json:
            print_json({"dry_run": args.dry_run, "matched": counted, "changed": 0, "skipped": 0})
        elif counted == 0:
            print(f"no run to {action.verb}")
        else:
            print(f"would {action.verb} {counted} run(s)")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(
                f"{action.verb} {counted} run(s)? stdin is not a terminal: pass --yes",
                EXIT_USAGE,
            )
        if not _confirmed(action, counted):
            raise CommandError("not confirmed: nothing done", EXIT_FAILED_CALL)
    totals = {"matched": 0, "changed": 0, "skipped": 0}
    batches = 0
    page_token = ""
    try:
        while True:
            response = action.batch(connection, filter_, False, args.batch_size, page_token, reason)
            batches += 1
            totals["matched"] += response.matched
            totals["changed"] += response.changed
            totals["skipped"] += response.skipped
            note(
                f"batch {batches}: {totals['changed']}/{counted} {action.done}, "
                f"{totals['matched']} looked at, {totals['skipped']} skipped"
            )
            page_token = response.next_page_token
            if not page_token:
                break
    except KeyboardInterrupt:
        note(
            f"interrupted after {totals['changed']} run(s) {action.done}: "
            "run the command again to go on"
        )
        raise
    if args.json:
        print_json({"dry_run": False, **totals, "batches": batches})
    else:
        print(
            f"{action.done} {totals['changed']} run(s) "
            f"({totals['matched']} looked at, {totals['skipped']} skipped)"
        )
    return EXIT_OK
