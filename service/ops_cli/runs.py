"""``stepd runs list | show | history | start | cancel | signal``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import datetime

from stepd.server.ops_cli.command import (
    CALL_TIMEOUT,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    CommandError,
    Connection,
    Verb,
)
from stepd.server.ops_cli.output import (
    CELL_WIDTH,
    enum_name,
    note,
    parse_json,
    payload_text,
    print_json,
    table,
    to_json,
    when,
)
from stepd.v1 import types_pb2
from stepd.v1 import workflow_service_pb2 as pb

STATUSES = ("pending", "running", "suspended", "completed", "failed", "cancelled")
_FAILED = (types_pb2.RUN_STATUS_FAILED, types_pb2.RUN_STATUS_CANCELLED)
_TERMINAL = (types_pb2.RUN_STATUS_COMPLETED, *_FAILED)
#: Seconds one GetRun(wait) call waits on the server.
_WAIT_SLICE = 25.0


def _status(run: types_pb2.Run) -> str:
    return enum_name(types_pb2.RunStatus.DESCRIPTOR, run.status)


def _time_arg(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        message = f"{text!r} is not a time like 2026-12-01T00:00:00Z"
        raise argparse.ArgumentTypeError(message) from None


# -- list ------------------------------------------------------------------------


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    parser.add_argument(
        "--status", action="append", choices=STATUSES, default=[], help="only this status; repeat"
    )
    parser.add_argument("--parent", metavar="RUN", help="only children of this run")
    parser.add_argument("--idempotency-key", metavar="KEY", help="only the run started with it")
    parser.add_argument("--schedule", metavar="ID", help="only runs this schedule started")
    parser.add_argument(
        "--created-after", metavar="TIME", type=_time_arg, help="created at or after (RFC 3339)"
    )
    parser.add_argument(
        "--created-before", metavar="TIME", type=_time_arg, help="created before (RFC 3339)"
    )
    parser.add_argument(
        "--limit", type=int, default=50, help="show at most this many runs, newest first (50)"
    )


def list_runs(
    connection: Connection, request: pb.ListRunsRequest, limit: int
) -> Iterator[types_pb2.Run]:
    """Up to ``limit`` runs matching ``request``, following the pages."""
    shown = 0
    request.page_size = min(max(limit, 1), 1000)
    while shown < limit:
        page = connection.call(connection.stub.ListRuns, request)
        for run in page.runs[: limit - shown]:
            shown += 1
            yield run
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def _list(connection: Connection, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", EXIT_USAGE)
    request = pb.ListRunsRequest(
        workflow_name=args.workflow or "",
        statuses=[types_pb2.RunStatus.Value(f"RUN_STATUS_{s.upper()}") for s in args.status],
        parent_run_id=args.parent or "",
        idempotency_key=args.idempotency_key or "",
        schedule_id=args.schedule or "",
    )
    if args.created_after is not None:
        request.create_time_after.FromDatetime(args.created_after)
    if args.created_before is not None:
        request.create_time_before.FromDatetime(args.created_before)
    runs = list(list_runs(connection, request, args.limit))
    if args.json:
        print_json([to_json(run) for run in runs])
        return EXIT_OK
    rows = [
        (
            run.run_id,
            run.workflow_name,
            run.workflow_version or "-",
            _status(run),
            when(run.create_time),
            payload_text(run.progress, CELL_WIDTH) if run.HasField("progress") else "-",
        )
        for run in runs
    ]
    print(table(("RUN_ID", "WORKFLOW", "VERSION", "STATUS", "CREATED", "PROGRESS"), rows))
    return EXIT_OK


# -- show ------------------------------------------------------------------------


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")


def _wait_row(wait: pb.PendingWait) -> tuple[str, str, str, str]:
    kind = enum_name(pb.PendingWaitKind.DESCRIPTOR, wait.kind)
    what = {
        "timer": f"fires {when(wait.fire_time)}",
        "signal": f"signal {wait.name!r}",
        "event": f"event {wait.name!r}"
        + (f" matching {wait.match_json}" if wait.match_json else ""),
        "hook": f"token {wait.hook_token}" if wait.hook_token else "hook (token hidden)",
        "child": f"child run {wait.child_run_id}",
    }.get(kind, "")
    deadline = when(wait.deadline, set_=wait.HasField("deadline"))
    return (wait.wait_key, kind, what, deadline)


def _show(connection: Connection, args: argparse.Namespace) -> int:
    response = connection.call(connection.stub.GetRun, pb.GetRunRequest(run_id=args.run_id))
    run = response.run
    children = list(list_runs(connection, pb.ListRunsRequest(parent_run_id=run.run_id), 1000))
    if args.json:
        document = to_json(response)
        document["children"] = [to_json(child) for child in children]
        print_json(document)
        return EXIT_OK
    fields = [
        ("run", run.run_id),
        ("workflow", f"{run.workflow_name} (version {run.workflow_version or 'not pinned yet'})"),
        (
            "status",
            _status(run) + (" (no connected worker serves it)" if response.no_worker else ""),
        ),
        ("created", when(run.create_time)),
        ("started", when(run.start_time)),
        ("ended", when(run.end_time)),
        ("input", payload_text(run.input)),
    ]
    if run.HasField("progress"):
        fields.append(("progress", payload_text(run.progress)))
    if run.HasField("result"):
        fields.append(("result", payload_text(run.result)))
    if run.HasField("error"):
        error = f"{run.error.type}: {run.error.message}"
        if run.error.step_key:
            error += f" (step {run.error.step_key}, attempt {run.error.attempt})"
        fields.append(("error", error))
    if run.cancel_reason:
        fields.append(("cancel reason", run.cancel_reason))
    if run.HasField("held_error"):
        fields.append(("held", f"{run.held_error.type}: {run.held_error.message}"))
    if run.idempotency_key:
        fields.append(("idempotency key", run.idempotency_key))
    if run.schedule_id:
        fields.append(("schedule", f"{run.schedule_id} (occasion {when(run.schedule_time)})"))
    if run.HasField("deadline"):
        fields.append(("deadline", when(run.deadline)))
    fields.append(("parent", run.parent_run_id or "-"))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {value}")
    if response.pending_waits:
        print("\nwaiting for (any one):")
        rows = [_wait_row(wait) for wait in response.pending_waits]
        print(table(("KEY", "KIND", "WHAT", "DEADLINE"), rows))
    if children:
        print("\nchildren:")
        child_rows = [(c.run_id, c.workflow_name, _status(c)) for c in children]
        print(table(("RUN_ID", "WORKFLOW", "STATUS"), child_rows))
    return EXIT_OK


# -- history ---------------------------------------------------------------------


def _history_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing entries as they are committed; stop when the run ends",
    )


def _event_row(event: types_pb2.RunEvent) -> tuple[str, str, str, str, str]:
    kind = enum_name(types_pb2.RunEventType.DESCRIPTOR, event.type)
    if event.HasField("error") and (event.error.type or event.error.message):
        detail = f"{event.error.type}: {event.error.message}"
    elif event.HasField("payload"):
        detail = payload_text(event.payload, 60)
    else:
        detail = event.detail
    return (str(event.sequence), when(event.time), kind, event.key or event.name or "-", detail)


_HISTORY_HEADERS = ("SEQ", "TIME", "TYPE", "KEY", "DETAIL")
#: Column widths when following (rows print one by one, so they cannot be measured).
_FOLLOW_WIDTHS = (5, 20, 15, 16)


def _fixed(row: tuple[str, ...]) -> str:
    cells = [cell.ljust(width) for cell, width in zip(row, _FOLLOW_WIDTHS, strict=False)]
    return "  ".join([*cells, *row[len(_FOLLOW_WIDTHS) :]]).rstrip()


def _history(connection: Connection, args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(connection, args)
    events: list[types_pb2.RunEvent] = []
    request = pb.ListRunEventsRequest(run_id=args.run_id, page_size=1000)
    while True:
        page = connection.call(connection.stub.ListRunEvents, request)
        events += page.events
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if args.json:
        print_json([to_json(event) for event in events])
    else:
        print(table(_HISTORY_HEADERS, [_event_row(event) for event in events]))
    return EXIT_OK


def _follow(connection: Connection, args: argparse.Namespace) -> int:
    """Print entries as WatchRun sends them; reopen the stream where it stopped
    when the server ends it early; the exit code says how the run ended."""
    request = pb.WatchRunRequest(run_id=args.run_id)
    if not args.json:
        print(_fixed(_HISTORY_HEADERS), flush=True)
    status = types_pb2.RUN_STATUS_UNSPECIFIED
    while status not in _TERMINAL:
        for response in connection.stream(connection.stub.WatchRun, request):
            for event in response.events:
                if args.json:
                    print_json(to_json(event), line=True)
                else:
                    print(_fixed(_event_row(event)), flush=True)
            request.page_token = response.resume_token
            if response.HasField("run"):
                status = response.run.status
    return EXIT_RUN_FAILED if status in _FAILED else EXIT_OK


# -- start -----------------------------------------------------------------------


def _start_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW")
    parser.add_argument("--input", default="null", metavar="JSON", help="the input (JSON)")
    parser.add_argument("--version", metavar="VERSION", help="pin the run to this version")
    parser.add_argument("--run-id", metavar="ID", help="a custom run id")
    parser.add_argument(
        "--idempotency-key", metavar="KEY", help="a second start with the key returns the first run"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for the run to end and print its result"
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="with --wait: give up after this long"
    )


def wait_for_end(connection: Connection, run_id: str, timeout: float | None) -> types_pb2.Run:
    """The run once it ended; CommandError when ``timeout`` seconds pass first."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - time.monotonic())
        request = pb.GetRunRequest(run_id=run_id, wait=True)
        request.wait_timeout.FromMilliseconds(max(int(left * 1000), 0))
        run = connection.call(connection.stub.GetRun, request, timeout=left + CALL_TIMEOUT).run
        if run.status in _TERMINAL:
            return run
        if deadline is not None and time.monotonic() >= deadline:
            raise CommandError(
                f"run {run_id} has not ended after {timeout:g} s (it is {_status(run)})"
            )


def _start(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.TriggerRequest(
        workflow_name=args.workflow,
        workflow_version=args.version or "",
        input=types_pb2.Payload(json=parse_json(args.input, "--input")),
        run_id=args.run_id or "",
        idempotency_key=args.idempotency_key or "",
    )
    response = connection.call(connection.stub.Trigger, request)
    run = response.run
    if not args.wait:
        if args.json:
            print_json({"run": to_json(run), "already_existed": response.already_existed})
        else:
            print(run.run_id)
            verb = "already existed" if response.already_existed else "started"
            note(f"run {run.run_id} of {run.workflow_name} {verb}")
        return EXIT_OK
    run = wait_for_end(connection, run.run_id, args.timeout)
    if args.json:
        print_json({"run": to_json(run), "already_existed": response.already_existed})
    elif run.status == types_pb2.RUN_STATUS_COMPLETED:
        print(payload_text(run.result))
    elif run.status == types_pb2.RUN_STATUS_FAILED:
        note(f"run {run.run_id} failed: {run.error.type}: {run.error.message}")
    else:
        note(f"run {run.run_id} was cancelled: {run.cancel_reason or 'no reason given'}")
    return EXIT_RUN_FAILED if run.status in _FAILED else EXIT_OK


# -- cancel, signal ----------------------------------------------------------------


def _cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument("--reason", default="", help="why, for the run's record")


def _cancel(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.CancelRunRequest(run_id=args.run_id, reason=args.reason)
    response = connection.call(connection.stub.CancelRun, request)
    if args.json:
        print_json({"run": to_json(response.run), "already_cancelled": response.already_cancelled})
    elif response.already_cancelled:
        print(f"run {response.run.run_id} was already cancelled")
    else:
        print(f"cancelled run {response.run.run_id}")
    return EXIT_OK


def _signal_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--data", default="null", metavar="JSON", help="the payload (JSON)")
    parser.add_argument("--request-id", metavar="ID", help="makes a retried send harmless")


def _signal(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.SignalRequest(
        run_id=args.run_id,
        name=args.name,
        payload=types_pb2.Payload(json=parse_json(args.data, "--data")),
        request_id=args.request_id or "",
    )
    connection.call(connection.stub.Signal, request)
    if args.json:
        print_json({"run_id": args.run_id, "name": args.name})
    else:
        print(f"sent signal {args.name!r} to run {args.run_id}")
    return EXIT_OK


VERBS = [
    Verb("runs", "list", "list runs, newest first", _list_arguments, _list),
    Verb(
        "runs",
        "show",
        "show a run: status, payloads, progress, waits, children",
        _show_arguments,
        _show,
    ),
    Verb("runs", "history", "print a run's history (--follow: live)", _history_arguments, _history),
    Verb("runs", "start", "start a run of a workflow", _start_arguments, _start),
    Verb("runs", "cancel", "cancel a run", _cancel_arguments, _cancel),
    Verb("runs", "signal", "send a run a signal", _signal_arguments, _signal),
]
