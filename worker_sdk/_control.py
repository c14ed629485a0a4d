"""What the parts of the replay runtime share: where a run's commands go
(``CommandChannel``), what a part may ask of the run (``RunControl``), and the
internal signals that stop a run's coroutine.

The signals derive from ``BaseException`` so that workflow code's ``except
Exception`` cannot swallow them::

    RunAbandoned         the worker gave the run up: nothing more is sent for it
    ├── LeaseLost        the server answered LEASE_LOST
    ├── CommandRejected  the server answered INVALID or INTERNAL_ERROR
    ├── RunSuspended     the server holds the run's waits (suspend_run acknowledged)
    └── RunHeld          replay met a journal the code cannot have produced
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import NoReturn, Protocol

from stepd._phase import Phase
from stepd.v1 import worker_service_pb2


class CommandChannel(Protocol):
    """Where a run's commands go: sends one and resolves with its result."""

    def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult]:
        """Queue ``command`` (run_id and lease_id already set); the future resolves with
        its CommandResult. Raises RunAbandoned when the channel is closed."""
        ...

    async def wait_for_room(self, run_id: str) -> None:
        """Return once ``run_id`` may go on past a sleep met early (at once unless
        the run waited it out without a slot and the worker's slots are full)."""
        ...

    @property
    def ordered_commands(self) -> bool:
        """True when the server applies each run's commands in the order sent, also
        across messages (``StreamSettings.ordered_commands``)."""
        ...


class RunControl(Protocol):
    """What the parts of a run's execution ask of the run (``RunExecutor``)."""

    @property
    def run_id(self) -> str:
        """The run's id."""
        ...

    @property
    def phase(self) -> Phase:
        """Where the execution stands."""
        ...

    def check_live(self) -> None:
        """Raise (a ``RunAbandoned``) when the run was suspended, held or given up."""
        ...

    async def gate(self, key: str) -> None:
        """Hold back new work (``key``) while the journal holds records no call took."""
        ...

    async def park(self) -> NoReturn:
        """Hold a new step or child that must not start (``phase.holds_new_work``)
        until the run is released or its suspension is answered; then raise."""
        ...

    async def wait_for_room(self) -> None:
        """Return once the run may go on past a sleep met early (``CommandChannel``)."""
        ...

    def in_flight(self) -> AbstractContextManager[None]:
        """Count the current task as a step body (or its record, or a sleep waiting
        out the rest of its time) in flight."""
        ...

    async def submit(
        self, command: worker_service_pb2.WorkerCommand
    ) -> worker_service_pb2.CommandResult:
        """Send ``command`` and return its answer (OK or DUPLICATE; any other answer
        gives the run up and raises)."""
        ...

    async def submit_in_order(
        self, command: worker_service_pb2.WorkerCommand
    ) -> worker_service_pb2.CommandResult:
        """``submit`` once every recorded value sent before is acknowledged."""
        ...

    @property
    def goes_on_from_outcomes(self) -> bool:
        """True when the step being executed may send its outcome without waiting
        for its answer (``send_outcome``): the server applies the run's commands in
        order, and the step runs in the workflow function's own task."""
        ...

    async def send_outcome(self, command: worker_service_pb2.WorkerCommand) -> None:
        """Send a step's outcome record, once every recorded value sent before is
        acknowledged, without waiting for its answer: the workflow goes on, and
        whatever the run sends next but its end waits for the answer."""
        ...

    async def outcomes_answered(self) -> None:
        """Wait until every step outcome sent with ``send_outcome`` is answered
        (before a new step body starts)."""
        ...

    def send(
        self, command: worker_service_pb2.WorkerCommand
    ) -> asyncio.Future[worker_service_pb2.CommandResult] | None:
        """Send ``command`` without waiting; None when the channel is closed."""
        ...

    def abandon(self) -> None:
        """Give the run up: send nothing more, cancel its coroutine and steps."""
        ...


class RunAbandoned(BaseException):
    """Internal signal: the worker gave the run up and sends nothing more for it.

    A ``BaseException`` so that workflow code's ``except Exception`` cannot
    swallow it.
    """


class LeaseLost(RunAbandoned):
    """The server answered LEASE_LOST: the worker no longer holds the run."""


class CommandRejected(RunAbandoned):
    """The server answered INVALID or INTERNAL_ERROR to a command of the run."""


class RunSuspended(RunAbandoned):
    """The run is suspended: the server holds its waits and wakes it when one is met.

    Raised where the workflow's coroutine waits once the server acknowledged
    ``suspend_run`` (and by any step or wait called after that, e.g. in a
    ``finally`` block), so that the coroutine unwinds without recording
    anything. A ``BaseException``: ``except Exception`` does not catch it.
    """


class RunHeld(RunAbandoned):
    """Replay met a wait in the journal that the code is not waiting on: the run is held
    as non-deterministic. Raised where the workflow's coroutine waits, so it unwinds
    without recording anything; the worker keeps the run until it is taken back or
    released."""
