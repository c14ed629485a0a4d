"""Operating runs: retry a failed run, fork a run from a step, cancel runs in bulk,
list the workers, delete a run.

Start a server with ``stepd serve`` and run this file (``STEPD_ADDRESS`` picks
another server). See docs/operating-runs.md.
"""

import asyncio
import contextlib
import os
from collections import Counter

from stepd import Client, RunFailedError, Worker, WorkflowContext, step, workflow

ADDRESS = os.environ.get("STEPD_ADDRESS", "127.0.0.1:50051")
ran: Counter[str] = Counter()  # how often each step body ran
fixed = False  # the bug in charge() until "the new version" is deployed


@step
async def reserve(order: int) -> str:
    ran["reserve"] += 1
    return f"reservation-{order}"


@step
async def charge(order: int) -> str:
    ran["charge"] += 1
    if not fixed:
        raise RuntimeError("card service URL is wrong")
    return f"payment-{order}"


@step
async def ship(order: int) -> str:
    ran["ship"] += 1
    return f"shipment-{order}"


@workflow(name="examples.order")
async def order(ctx: WorkflowContext, number: int) -> list[str]:
    return [await reserve(number), await charge(number), await ship(number)]


async def main() -> None:
    global fixed
    async with Worker(ADDRESS, workflows=[order]) as worker, Client(ADDRESS) as client:
        serving = asyncio.create_task(worker.run())

        # Retry: the run failed in charge(); once the code is fixed it resumes there.
        handle = await client.trigger(order, 7)
        with contextlib.suppress(RunFailedError):
            await handle.result()
        failed = await handle.info()
        print(f"{failed.status}: {failed.error_message} (in {failed.error_step_key})")
        fixed = True
        await client.retry(handle.run_id, reason="fixed the card service URL")
        print(await handle.result(), dict(ran))

        # Fork from reserve: a new run that replays reserve and runs the rest.
        fork = await client.fork(handle.run_id, "reserve")
        print(await client.get_handle(fork.run_id).result(), dict(ran))
        print("forked from the order:", fork.forked_from_run_id == handle.run_id)

        # Bulk: count, then cancel every unfinished run of a workflow; again: nothing.
        for number in range(20):
            await client.trigger("examples.unserved", number)
        counted = await client.cancel_runs(workflow="examples.unserved", dry_run=True)
        done = await client.cancel_runs(workflow="examples.unserved", reason="cleanup")
        again = await client.cancel_runs(workflow="examples.unserved")
        print(f"would cancel {counted.matched}, cancelled {done.changed}, then {again.changed}")

        # Workers: who is connected, serving what.
        for info in await client.list_workers():
            print(info.workflows, "capacity", info.capacity, "holds", info.runs_held)

        # Delete a finished run (its journal and history go with it).
        await client.delete_run(fork.run_id)
        print("fork deleted")

        serving.cancel()


if __name__ == "__main__":
    asyncio.run(main())
