"""Runs that start without a caller: an event trigger, cron schedules, a delayed start.

Start a server with ``stepd serve`` and run this file (``STEPD_ADDRESS`` picks
another server). It serves the workflows below, publishes an event that starts
a run, creates a schedule that fires every two seconds and waits for two of its
runs, and triggers a run that starts one second later. See docs/starting-runs.md.
"""

import asyncio
import os
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from stepd import Client, Worker, WorkflowContext, step, workflow
from stepd.schedules import Schedule

ADDRESS = os.environ.get("STEPD_ADDRESS", "127.0.0.1:50051")


class Signup(BaseModel):
    user: str


class Report(BaseModel):
    name: str


@step
async def send_welcome(user: str) -> str:
    return f"welcome mail sent to {user}"


@workflow(name="examples.welcome", events=["user.signed_up"])
async def welcome(ctx: WorkflowContext, signup: Signup) -> str:
    """One run per published ``user.signed_up`` event; the payload is the input."""
    return await send_welcome(signup.user)


@step
async def build(name: str) -> str:
    return f"report {name} built"


# Declared in code: the worker registers it (id "examples.report"); every day at
# 07:00 in Paris, skipping an occasion while the previous run is still going.
@workflow(
    name="examples.report",
    schedule=Schedule("0 7 * * *", time_zone="Europe/Paris", input=Report(name="daily")),
)
async def report(ctx: WorkflowContext, job: Report) -> str:
    return await build(job.name)


async def main() -> None:
    async with (
        Worker(ADDRESS, workflows=[welcome, report]) as worker,
        Client(ADDRESS) as client,
    ):
        serving = asyncio.create_task(worker.run())

        # An event starts one run of every workflow that declares it, once per id.
        await client.execute(welcome, Signup(user="probe"))  # the worker's hello is in
        published = await client.publish_event(
            "user.signed_up", Signup(user="ada"), event_id="signup-ada"
        )
        (run_id,) = published.started_run_ids
        print(await client.get_handle(run_id, welcome).result())  # welcome mail sent to ada

        # A schedule managed through the API: every two seconds (six fields: seconds first).
        every_two = Schedule("*/2 * * * * *", input=Report(name="frequent"), overlap="skip")
        schedule = await client.create_schedule(report, every_two)
        for _ in range(150):  # up to 30 s for two occasions
            runs = (await client.get_schedule(schedule.schedule_id)).recent_runs
            if len(runs) >= 2:
                break
            await asyncio.sleep(0.2)
        info = await client.pause_schedule(schedule.schedule_id)
        print("paused:", info.paused)  # paused: True
        for run in runs[:2]:
            print(await client.get_handle(run.run_id, report).result())  # report frequent built
        await client.delete_schedule(schedule.schedule_id)

        # A delayed start: pending, holding no worker, until its time.
        start_at = datetime.now(UTC) + timedelta(seconds=1)
        later = await client.trigger(welcome, Signup(user="bob"), start_at=start_at)
        print(await later.result())  # welcome mail sent to bob
        started = (await later.info()).start_time
        on_time = started is not None and started >= start_at - timedelta(milliseconds=1)
        print("started on time:", on_time)  # started on time: True
        serving.cancel()


if __name__ == "__main__":
    asyncio.run(main())
