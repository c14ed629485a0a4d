"""Workflows started by events, for the end-to-end tests of event triggers. Served by
``stepd-worker tests.e2e.start_workflows``."""

from pydantic import BaseModel

from stepd import WorkflowContext, step, workflow
from tests.e2e.workflows import mark

SIGNED_UP = "e2e.user.signed_up"


class Signup(BaseModel):
    """The payload of a SIGNED_UP event (and so the input of the runs it starts)."""

    tag: str
    user: str


@step
async def send_welcome(tag: str, user: str) -> str:
    mark(tag, f"welcome:{user}")
    return f"welcome {user}"


@step
async def audit(tag: str, user: str) -> str:
    mark(tag, f"audit:{user}")
    return f"audited {user}"


@workflow(name="e2e.welcome", events=[SIGNED_UP])
async def welcome(ctx: WorkflowContext, signup: Signup) -> str:
    return await send_welcome(signup.tag, signup.user)


@workflow(name="e2e.audit_signup", events=[SIGNED_UP, "e2e.user.renamed"])
async def audit_signup(ctx: WorkflowContext, signup: Signup) -> str:
    return await audit(signup.tag, signup.user)
