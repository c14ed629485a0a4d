"""A workflow with a declared schedule, in its own module so that it fires only in the
tests that serve it (``stepd-worker tests.e2e.scheduled_workflows``)."""

from pydantic import BaseModel

from stepd import WorkflowContext, workflow
from stepd.schedules import Schedule


class Beat(BaseModel):
    """The declared schedule's input."""

    note: str


@workflow(
    name="e2e.heartbeat",
    schedule=Schedule("* * * * * *", time_zone="Europe/Paris", input=Beat(note="beat")),
)
async def heartbeat(ctx: WorkflowContext, beat: Beat) -> str:
    return beat.note
