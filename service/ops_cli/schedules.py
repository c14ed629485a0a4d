"""``stepd schedules list | show | create | pause | resume | delete | trigger``."""

from __future__ import annotations

import argparse

from stepd.server.ops_cli.command import EXIT_OK, Connection, Verb
from stepd.server.ops_cli.output import (
    enum_name,
    parse_json,
    payload_text,
    print_json,
    table,
    to_json,
    when,
)
from stepd.v1 import schedules_pb2, types_pb2
from stepd.v1 import workflow_service_pb2 as pb

OVERLAPS = ("skip", "allow", "cancel_previous")
CATCHUPS = ("skip", "run_once")


def _id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schedule_id", metavar="SCHEDULE")


def _print_schedule(schedule: schedules_pb2.Schedule, args: argparse.Namespace, done: str) -> None:
    if args.json:
        print_json(to_json(schedule))
    else:
        print(f"{done} schedule {schedule.schedule_id}" if done else schedule.schedule_id)


# -- list, show --------------------------------------------------------------------


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", metavar="NAME", help="only schedules of this workflow")


def _next(schedule: schedules_pb2.Schedule) -> str:
    if schedule.paused or not schedule.next_occasion_times:
        return "-"
    return when(schedule.next_occasion_times[0])


def _list(connection: Connection, args: argparse.Namespace) -> int:
    schedules: list[schedules_pb2.Schedule] = []
    request = pb.ListSchedulesRequest(workflow_name=args.workflow or "", page_size=1000)
    while True:
        page = connection.call(connection.stub.ListSchedules, request)
        schedules += page.schedules
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if args.json:
        print_json([to_json(s) for s in schedules])
        return EXIT_OK
    rows = [
        (
            s.schedule_id,
            s.workflow_name,
            s.spec.cron,
            s.spec.time_zone or "UTC",
            "yes" if s.paused else "no",
            _next(s),
        )
        for s in schedules
    ]
    print(table(("SCHEDULE_ID", "WORKFLOW", "CRON", "TIME_ZONE", "PAUSED", "NEXT"), rows))
    return EXIT_OK


def _show(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.GetScheduleRequest(schedule_id=args.schedule_id)
    schedule = connection.call(connection.stub.GetSchedule, request).schedule
    if args.json:
        print_json(to_json(schedule))
        return EXIT_OK
    spec = schedule.spec
    fields = [
        ("schedule", schedule.schedule_id),
        (
            "workflow",
            schedule.workflow_name
            + (f" (version {schedule.workflow_version})" if schedule.workflow_version else ""),
        ),
        ("cron", f"{spec.cron} ({spec.time_zone or 'UTC'})"),
        ("input", payload_text(spec.input)),
        ("overlap", enum_name(schedules_pb2.ScheduleOverlapPolicy.DESCRIPTOR, spec.overlap_policy)),
        (
            "catch-up",
            enum_name(schedules_pb2.ScheduleCatchupPolicy.DESCRIPTOR, spec.catchup_policy),
        ),
        ("paused", "yes" if schedule.paused else "no"),
        ("next", ", ".join(when(t) for t in schedule.next_occasion_times) or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {value}")
    if schedule.recent_runs:
        print("\nrecent runs:")
        rows = [
            (
                r.run_id,
                when(r.schedule_time),
                enum_name(types_pb2.RunStatus.DESCRIPTOR, r.status),
            )
            for r in schedule.recent_runs
        ]
        print(table(("RUN_ID", "OCCASION", "STATUS"), rows))
    return EXIT_OK


# -- create ----------------------------------------------------------------------------


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow", required=True, metavar="NAME", help="the workflow to start")
    parser.add_argument("--cron", required=True, help='when, e.g. "0 9 * * MON-FRI"')
    parser.add_argument("--id", metavar="SCHEDULE", help="the schedule's id (default: assigned)")
    parser.add_argument("--time-zone", metavar="ZONE", help="e.g. Europe/Paris (default UTC)")
    parser.add_argument("--input", default="null", metavar="JSON", help="each run's input")
    parser.add_argument("--version", metavar="VERSION", help="pin runs to this version")
    parser.add_argument("--overlap", choices=OVERLAPS, help="when the previous run is unfinished")
    parser.add_argument("--catchup", choices=CATCHUPS, help="occasions missed while down")
    parser.add_argument("--paused", action="store_true", help="create it paused")


def _create(connection: Connection, args: argparse.Namespace) -> int:
    spec = schedules_pb2.ScheduleSpec(
        cron=args.cron,
        time_zone=args.time_zone or "",
        input=types_pb2.Payload(json=parse_json(args.input, "--input")),
    )
    if args.overlap:
        spec.overlap_policy = schedules_pb2.ScheduleOverlapPolicy.Value(
            f"SCHEDULE_OVERLAP_POLICY_{args.overlap.upper()}"
        )
    if args.catchup:
        spec.catchup_policy = schedules_pb2.ScheduleCatchupPolicy.Value(
            f"SCHEDULE_CATCHUP_POLICY_{args.catchup.upper()}"
        )
    request = pb.CreateScheduleRequest(
        schedule_id=args.id or "",
        workflow_name=args.workflow,
        workflow_version=args.version or "",
        spec=spec,
        paused=args.paused,
    )
    response = connection.call(connection.stub.CreateSchedule, request)
    _print_schedule(response.schedule, args, "existing" if response.already_existed else "created")
    return EXIT_OK


# -- pause, resume, delete, trigger --------------------------------------------------


def _pause(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.PauseScheduleRequest(schedule_id=args.schedule_id)
    _print_schedule(
        connection.call(connection.stub.PauseSchedule, request).schedule, args, "paused"
    )
    return EXIT_OK


def _resume(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.ResumeScheduleRequest(schedule_id=args.schedule_id)
    schedule = connection.call(connection.stub.ResumeSchedule, request).schedule
    _print_schedule(schedule, args, "resumed")
    return EXIT_OK


def _delete(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.DeleteScheduleRequest(schedule_id=args.schedule_id)
    connection.call(connection.stub.DeleteSchedule, request)
    if args.json:
        print_json({"schedule_id": args.schedule_id})
    else:
        print(f"deleted schedule {args.schedule_id}")
    return EXIT_OK


def _trigger_arguments(parser: argparse.ArgumentParser) -> None:
    _id_argument(parser)
    parser.add_argument("--request-id", metavar="ID", help="makes a retried trigger harmless")


def _trigger(connection: Connection, args: argparse.Namespace) -> int:
    request = pb.TriggerScheduleRequest(
        schedule_id=args.schedule_id, request_id=args.request_id or ""
    )
    response = connection.call(connection.stub.TriggerSchedule, request)
    if args.json:
        print_json(to_json(response))
    elif response.skipped:
        print(f"schedule {args.schedule_id}: skipped (its previous run is unfinished)")
    else:
        print(response.run.run_id)
    return EXIT_OK


VERBS = [
    Verb("schedules", "list", "list schedules", _list_arguments, _list),
    Verb(
        "schedules",
        "show",
        "show a schedule, its next occasions and recent runs",
        _id_argument,
        _show,
    ),
    Verb("schedules", "create", "create a cron schedule", _create_arguments, _create),
    Verb("schedules", "pause", "pause a schedule", _id_argument, _pause),
    Verb("schedules", "resume", "resume a paused schedule", _id_argument, _resume),
    Verb("schedules", "delete", "delete a schedule (its runs are kept)", _id_argument, _delete),
    Verb("schedules", "trigger", "start a run of a schedule now", _trigger_arguments, _trigger),
]
