"""``stepd runs cancel | retry | fork | delete``: the commands that change runs.

``cancel`` and ``retry`` act on one run (``RUN``) or on every run a filter
selects (``--workflow``, ``--status``, ...: see ``bulk``).
"""

from __future__ import annotations

import argparse

from stepd.server.ops_cli import bulk
from stepd.server.ops_cli.command import EXIT_OK, EXIT_USAGE, CommandError, Connection, Verb
from stepd.server.ops_cli.output import note, print_json, to_json
from stepd.server.ops_cli.runs import filter_arguments, time_arg
from stepd.v1 import operations_pb2
from stepd.v1 import workflow_service_pb2 as pb


def _one_or_filter(args: argparse.Namespace, verb: str) -> bool:
    """True for the single-run form, False for the filter form; a usage error for
    neither or both."""
    if args.run_id and bulk.has_filter(args):
        raise CommandError(f"runs {verb}: give RUN or a filter, not both", EXIT_USAGE)
    if not args.run_id and not bulk.has_filter(args):
        raise CommandError(
            f"runs {verb}: give RUN or a filter (--workflow, --status, ...)", EXIT_USAGE
        )
    if args.run_id and (args.dry_run or args.yes):
        raise CommandError("--dry-run and --yes go with a filter, not RUN", EXIT_USAGE)
    return bool(args.run_id)


# -- cancel ------------------------------------------------------------------------


def _cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN", nargs="?", help="the run (or use a filter)")
    parser.add_argument("--reason", default="", help="why, for the run's record")
    filter_arguments(parser)
    bulk.bulk_arguments(parser)


def _cancel(connection: Connection, args: argparse.Namespace) -> int:
    if not _one_or_filter(args, "cancel"):
        return bulk.run_bulk(connection, args, bulk.CANCEL)
    request = pb.CancelRunRequest(run_id=args.run_id, reason=args.reason)
    response = connection.call(connection.stub.CancelRun, request)
    if args.json:
        print_json({"run": to_json(response.run), "already_cancelled": response.already_cancelled})
    elif response.already_cancelled:
        print(f"run {response.run.run_id} was already cancelled")
    else:
        print(f"cancelled run {response.run.run_id}")
    return EXIT_OK


# -- retry -------------------------------------------------------------------------


def _retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN", nargs="?", help="the run (or use a filter)")
    deadline = parser.add_mutually_exclusive_group()
    deadline.add_argument(
        "--deadline", type=time_arg, metavar="TIME", help="with RUN: a new deadline (RFC 3339)"
    )
    deadline.add_argument(
        "--clear-deadline", action="store_true", help="with RUN: remove the run's deadline"
    )
    parser.add_argument("--reason", default="", help="why, for the run's history")
    filter_arguments(parser)
    bulk.bulk_arguments(parser)


def _retry(connection: Connection, args: argparse.Namespace) -> int:
    if not _one_or_filter(args, "retry"):
        if args.deadline is not None or args.clear_deadline:
            raise CommandError("--deadline and --clear-deadline go with RUN", EXIT_USAGE)
        return bulk.run_bulk(connection, args, bulk.RETRY)
    request = operations_pb2.RetryRunRequest(
        run_id=args.run_id, clear_deadline=args.clear_deadline, reason=args.reason
    )
    if args.deadline is not None:
        request.deadline.FromDatetime(args.deadline)
    run = connection.call(connection.stub.RetryRun, request).run
    if args.json:
        print_json({"run": to_json(run)})
    else:
        print(f"retried run {run.run_id}: it resumes where it stopped")
    return EXIT_OK


# -- fork --------------------------------------------------------------------------


def _fork_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument(
        "--from-step",
        required=True,
        metavar="KEY",
        help="a recorded step (e.g. charge, charge#2): the fork keeps the journal up to it",
    )
    parser.add_argument("--run-id", dest="new_run_id", metavar="ID", help="the new run's id")
    parser.add_argument("--version", metavar="VERSION", help="run the fork on this version")
    parser.add_argument("--request-id", metavar="ID", help="makes a retried fork harmless")


def _fork(connection: Connection, args: argparse.Namespace) -> int:
    request = operations_pb2.ForkRunRequest(
        run_id=args.run_id,
        step_key=args.from_step,
        new_run_id=args.new_run_id or "",
        workflow_version=args.version or "",
        request_id=args.request_id or "",
    )
    response = connection.call(connection.stub.ForkRun, request)
    run = response.run
    if args.json:
        print_json({"run": to_json(run), "already_existed": response.already_existed})
        return EXIT_OK
    print(run.run_id)
    verb = "was made before" if response.already_existed else "started"
    note(
        f"run {run.run_id}, a fork of {run.forked_from_run_id} "
        f"from step {run.forked_from_step_key}, {verb}"
    )
    return EXIT_OK


# -- delete ------------------------------------------------------------------------


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")


def _delete(connection: Connection, args: argparse.Namespace) -> int:
    request = operations_pb2.DeleteRunRequest(run_id=args.run_id)
    response = connection.call(connection.stub.DeleteRun, request)
    if args.json:
        print_json({"run_id": response.run_id})
    else:
        print(f"deleted run {response.run_id}")
    return EXIT_OK


VERBS = [
    Verb(
        "runs",
        "cancel",
        "cancel a run, or every unfinished run a filter selects",
        _cancel_arguments,
        _cancel,
    ),
    Verb(
        "runs",
        "retry",
        "resume a failed or cancelled run where it stopped (or every one a filter selects)",
        _retry_arguments,
        _retry,
    ),
    Verb(
        "runs",
        "fork",
        "start a new run with a run's journal up to a step",
        _fork_arguments,
        _fork,
    ),
    Verb("runs", "delete", "delete a finished run with its history", _delete_arguments, _delete),
]
