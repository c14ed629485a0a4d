"""The README example. Start a server (`stepd serve`), then run this file."""

import asyncio
import os

from pydantic import BaseModel

from stepd import Client, Worker, WorkflowContext, step, workflow

ADDRESS = os.environ.get("STEPD_ADDRESS", "127.0.0.1:50051")


class Greeting(BaseModel):
    text: str
    length: int


@step
async def compose(name: str) -> str:
    return f"Hello, {name}!"


@workflow
async def greet(ctx: WorkflowContext, name: str) -> Greeting:
    text = await compose(name)  # recorded once; a replay reads the stored result
    return Greeting(text=text, length=len(text))


async def main() -> None:
    async with Client(ADDRESS) as client, Worker(client, workflows=[greet]) as worker:
        serving = asyncio.create_task(worker.run())
        greeting = await client.execute(greet, "world")
        print(greeting.text, greeting.length)  # Hello, world! 13
        serving.cancel()


if __name__ == "__main__":
    asyncio.run(main())
