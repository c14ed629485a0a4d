"""``Client`` and ``RunHandle``: start runs, wait for them, inspect, list, signal and
cancel them, read their history, publish events and execute hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, overload

from pydantic import TypeAdapter

from stepd import _tracing as tracing
from stepd._calls import WorkflowCalls
from stepd._definitions import Workflow
from stepd._rpc import ConnectionSettings, PathLike
from stepd._run_codec import run_info, status_to_proto, to_timestamp
from stepd._runs import RunInfo, RunStatus
from stepd._serde import ANY_ADAPTER, dump_input, dumps, loads, payload_text
from stepd.errors import RunCancelledError, RunFailedError
from stepd.history import RunEvent
from stepd.operations import BulkResult, WorkerInfo, worker_info
from stepd.schedules import Schedule, ScheduleInfo
from stepd.v1 import operations_pb2, types_pb2, workflow_service_pb2

I = TypeVar("I")  # noqa: E741 - the workflow's input type
R = TypeVar("R")

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """What ``Client.publish_event`` did.

    ``event_id`` is the event's id (the one given, or one the server assigned);
    ``already_published`` is True when an event with that id was published before,
    in which case nothing was done; ``woken_run_ids`` are the runs that were waiting
    for it and woke; ``started_run_ids`` the runs it started.
    """

    event_id: str
    already_published: bool
    woken_run_ids: tuple[str, ...]
    started_run_ids: tuple[str, ...] = ()
    """The runs it started: one per workflow declaring the event in ``@workflow(events=...)``."""


class RunHandle(Generic[R]):
    """A started run: its id, and ``result()`` to wait for its outcome.

    Made by ``Client.trigger``, ``Client.get_handle`` and ``Client.trigger_schedule``.
    """

    __slots__ = ("_adapter", "_calls", "already_existed", "debounced", "run_id")

    def __init__(
        self,
        calls: WorkflowCalls,
        run_id: str,
        *,
        already_existed: bool = False,
        debounced: bool = False,
        result_adapter: TypeAdapter[Any] = ANY_ADAPTER,
    ) -> None:
        self._calls = calls
        self._adapter = result_adapter
        self.run_id = run_id
        """The run's id."""
        self.already_existed = already_existed
        """True when the idempotency key named a run that existed before the trigger."""
        self.debounced = debounced
        """True when the trigger was folded into its key's pending debounced run (this
        run, whose input is now the trigger's)."""

    async def result(self, timeout: float | None = None) -> R:  # noqa: ASYNC109
        """Wait until the run finishes and return its result.

        The result is validated into the workflow's return annotation (plain
        JSON values for a run triggered by name). Raises RunFailedError or
        RunCancelledError, and TimeoutError when ``timeout`` seconds pass first.
        Waiting happens on the server (``GetRun`` with ``wait``); while the
        server is unreachable the call is retried.
        """
        return _outcome(await self._calls.wait_for_end(self.run_id, timeout), self._adapter)  # type: ignore[no-any-return]

    async def info(self) -> RunInfo:
        """Fetch the run as it stands now."""
        return await self._calls.get_run(self.run_id)

    async def cancel(self, reason: str = "") -> RunInfo:
        """Cancel the run (see ``Client.cancel``)."""
        return await self._calls.cancel(self.run_id, reason)

    async def signal(
        self, name: str, payload: Any = None, *, request_id: str | None = None
    ) -> None:
        """Send the run a signal (see ``Client.signal``)."""
        await self._calls.signal(self.run_id, name, dumps(payload), request_id or "")

    def events(self, *, page_size: int = 100) -> AsyncIterator[RunEvent]:
        """Iterate over the run's history (see ``Client.list_run_events``)."""
        return self._calls.events(self.run_id, page_size)

    def watch(self) -> AsyncIterator[RunEvent]:
        """Follow the run's history live (see ``Client.watch_run``)."""
        return self._calls.watch(self.run_id)

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r}, already_existed={self.already_existed})"


class Client:
    """Talks to a stepd server: trigger runs, wait for results, inspect, list, signal,
    cancel, read a run's history, and publish events.

    Use as ``async with Client(address) as client:`` (or call ``close()``).
    Server errors are raised as ``StepdError`` subclasses (see
    ``stepd.errors``).

    A server that needs API keys gets ``api_key`` with every call. TLS is on
    when ``tls`` is true or a certificate file is given: ``ca_file`` is the CA
    bundle that verifies the server (default: the system's CAs), ``cert_file``
    and ``key_file`` a client certificate for mutual TLS, ``server_name`` the
    name to expect in the server's certificate when the address does not hold
    it. Files are read here. A ``Worker`` given this client connects the same
    way (docs/security.md).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        tls: bool | None = None,
        ca_file: PathLike | None = None,
        cert_file: PathLike | None = None,
        key_file: PathLike | None = None,
        server_name: str | None = None,
    ) -> None:
        settings = ConnectionSettings.create(
            address,
            api_key=api_key,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            server_name=server_name,
        )
        self._calls = WorkflowCalls(settings)

    @property
    def address(self) -> str:
        """The server address this client talks to."""
        return self._calls.settings.address

    @property
    def connection(self) -> ConnectionSettings:
        """How this client reaches the server (address, TLS, API key). A ``Worker`` made with
        this client (``Worker(client, workflows=[...])``) connects with the same
        settings."""
        return self._calls.settings

    async def __aenter__(self) -> Self:
        self._calls.stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        await self._calls.close()

    # -- starting runs -------------------------------------------------------

    @overload
    async def trigger(
        self,
        workflow: Workflow[[I], R],
        input: I,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        concurrency_key: str | None = None,
        priority: int | None = None,
        debounce_key: str | None = None,
    ) -> RunHandle[R]: ...
    @overload
    async def trigger(
        self,
        workflow: Workflow[[], R],
        input: None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        concurrency_key: str | None = None,
        priority: int | None = None,
        debounce_key: str | None = None,
    ) -> RunHandle[R]: ...
    @overload
    async def trigger(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        concurrency_key: str | None = None,
        priority: int | None = None,
        debounce_key: str | None = None,
    ) -> RunHandle[Any]: ...
    async def trigger(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        concurrency_key: str | None = None,
        priority: int | None = None,
        debounce_key: str | None = None,
    ) -> RunHandle[Any]:
        """Start a run of a workflow (a ``@workflow`` object or a name) with an input.

        A workflow object pins the run to its version and types the result; a
        name runs the newest version a worker registered (or ``version``).
        ``run_id`` sets a custom id; a second trigger with the same
        ``idempotency_key`` returns the first run (``handle.already_existed``).
        ``deadline`` (an aware datetime) is when the server fails the run with
        reason ``deadline_exceeded`` if it has not finished.
        ``start_at`` (an aware datetime; naive means UTC) delays the start: the run
        stays pending, holding no worker, until then (also across server restarts).
        ``concurrency_key`` sets the run's key under its workflow's ``Concurrency``
        limit instead of the one read from the input; a refusal by a
        ``cancel_newest`` limit raises ``StepdError``.
        ``priority`` (-1000 to 1000) overrides the workflow's default priority:
        among ready runs a higher one is handed out first.
        ``debounce_key`` sets the trigger's key under its workflow's ``Debounce``
        instead of the one read from the input; a trigger folded into its key's
        pending run returns that run's handle with ``debounced`` True.
        """
        request, adapter = self._trigger_request(
            workflow,
            input,
            run_id=run_id,
            idempotency_key=idempotency_key,
            version=version,
            deadline=deadline,
            start_at=start_at,
            concurrency_key=concurrency_key,
            priority=priority,
            debounce_key=debounce_key,
        )
        response = await self._calls.call(
            self._calls.stub().Trigger, request, metadata=_trace_metadata()
        )
        return RunHandle(
            self._calls,
            response.run.run_id,
            already_existed=response.already_existed,
            debounced=response.debounced,
            result_adapter=adapter,
        )

    @overload
    async def execute(
        self,
        workflow: Workflow[[I], R],
        input: I,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> R: ...
    @overload
    async def execute(
        self,
        workflow: Workflow[[], R],
        input: None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> R: ...
    @overload
    async def execute(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any: ...
    async def execute(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        version: str | int | None = None,
        deadline: datetime | None = None,
        start_at: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Trigger a run and wait for its result (as ``trigger`` then ``handle.result``,
        in one call: ``Trigger`` with ``wait``).

        Takes the options of ``trigger`` (``run_id``, ``idempotency_key``, ``version``,
        ``deadline``, ``start_at``) and ``timeout``: the seconds to wait for the
        result before raising ``TimeoutError`` (the run goes on). Raises
        ``RunFailedError`` or ``RunCancelledError`` when the run does not complete.
        """
        request, adapter = self._trigger_request(
            workflow,
            input,
            run_id=run_id,
            idempotency_key=idempotency_key,
            version=version,
            deadline=deadline,
            start_at=start_at,
        )
        run = await self._calls.trigger_and_wait(request, timeout, _trace_metadata())
        return _outcome(run, adapter)

    @overload
    def get_handle(self, run_id: str) -> RunHandle[Any]: ...
    @overload
    def get_handle(self, run_id: str, workflow: Workflow[Any, R]) -> RunHandle[R]: ...
    def get_handle(self, run_id: str, workflow: Workflow[Any, Any] | None = None) -> RunHandle[Any]:
        """A handle on an existing run; pass its workflow to type the result."""
        adapter = ANY_ADAPTER if workflow is None else workflow.result_adapter
        return RunHandle(self._calls, run_id, result_adapter=adapter)

    # -- inspecting runs -----------------------------------------------------

    async def get_run(self, run_id: str) -> RunInfo:
        """Fetch a run; raises NotFoundError for an unknown id."""
        return await self._calls.get_run(run_id)

    async def cancel(self, run_id: str, *, reason: str = "") -> RunInfo:
        """Cancel a run that has not finished; return it (now cancelled).

        Raises NotFoundError for an unknown id and FailedPreconditionError when
        the run already finished.
        """
        return await self._calls.cancel(run_id, reason)

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, request_id: str | None = None
    ) -> None:
        """Send a signal to a run: ``await client.signal(run_id, "approve", {"by": "ada"})``.

        The run gets it from ``ctx.wait_for_signal(name)``: signals of one run wait in
        an inbox in the order they were stored, each taken by one wait, so a signal
        sent before the workflow waits for it is kept. The payload is any
        JSON-serializable value (pydantic models and dataclasses too). Returns once
        the signal is stored. A ``request_id`` makes a retried call harmless: the
        same non-empty id twice for one run stores one signal.

        Raises NotFoundError for an unknown run, FailedPreconditionError for a run
        that finished, InvalidArgumentError for an empty name.
        """
        await self._calls.signal(run_id, name, dumps(payload), request_id or "")

    async def execute_hook(self, token: str, payload: Any = None) -> str:
        """Execute a hook: ``await client.execute_hook(token, {"approved": True})``.

        ``token`` is a hook's token (``ctx.create_hook().token``, handed out by the
        workflow). The run waiting on it (``ctx.wait_for_hook``) resumes with
        ``payload`` (any JSON-serializable value); an execution that comes before the
        run waits is kept until it does. Returns the run's id.

        A hook executes once. Raises NotFoundError for an unknown or mangled token,
        FailedPreconditionError for a hook that was executed already or has expired
        (its wait timed out or lost, or its run ended), InvalidArgumentError for an
        empty token.
        """
        request = workflow_service_pb2.ExecuteHookRequest(
            token=token, payload=types_pb2.Payload(json=dumps(payload))
        )
        response = await self._calls.call(self._calls.stub().ExecuteHook, request)
        return response.run_id

    async def publish_event(
        self, name: str, payload: Any = None, *, event_id: str | None = None
    ) -> PublishedEvent:
        """Publish an event: ``await client.publish_event("order.paid", {"order": 7})``.

        Every run waiting in ``ctx.wait_for_event(name, match=...)`` whose wait began at
        or before now and whose ``match`` fields the payload has with equal values wakes
        with the payload; runs that start waiting later do not get it. The payload is a
        JSON object to be matched on (a dict, pydantic model or dataclass). An
        ``event_id`` makes a retried call harmless: an id published before does nothing
        (``already_published``). Returns a ``PublishedEvent`` with the id and the runs
        that woke.

        Raises InvalidArgumentError for an empty name.
        """
        request = workflow_service_pb2.PublishEventRequest(
            name=name,
            payload=types_pb2.Payload(json=dumps(payload)),
            event_id=event_id or "",
        )
        response = await self._calls.call(self._calls.stub().PublishEvent, request)
        return PublishedEvent(
            event_id=response.event_id,
            already_published=response.already_published,
            woken_run_ids=tuple(response.woken_run_ids),
            started_run_ids=tuple(response.started_run_ids),
        )

    async def list_run_events(
        self, run_id: str, *, page_size: int = 100
    ) -> AsyncIterator[RunEvent]:
        """Iterate over a run's history, oldest first, following the server's pages.

        Yields ``stepd.history.RunEvent`` entries: triggered, dispatched, step
        outcomes, suspensions, signals and met waits, custom entries (``ctx.log``,
        ``ctx.record``) and how the run ended. Raises NotFoundError for an unknown
        run.
        """
        async for event in self._calls.events(run_id, page_size):
            yield event

    async def watch_run(self, run_id: str) -> AsyncIterator[RunEvent]:
        """Follow a run's history live: the entries so far, then each new entry as
        it is committed (steps, waits, ``ctx.set_progress`` as ``PROGRESS``
        entries), ending after the run's last entry once it ended.

        Uses the ``WatchRun`` stream; when the server ends a stream early (after
        30 minutes) it is reopened where it stopped. Raises NotFoundError for an
        unknown run. Stop early by breaking out of the loop.
        """
        async for event in self._calls.watch(run_id):
            yield event

    async def list_runs(
        self,
        *,
        workflow: Workflow[Any, Any] | str | None = None,
        statuses: Iterable[RunStatus | str] | None = None,
        parent_run_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 100,
        payloads: bool = False,
        idempotency_key: str | None = None,
        schedule_id: str | None = None,
    ) -> AsyncIterator[RunInfo]:
        """Iterate over runs, newest first, following the server's pages.

        Filters: a workflow (object or name), statuses, a parent run, and a
        creation time range (``created_after`` inclusive, ``created_before``
        exclusive), the idempotency key a run was started with, the schedule that
        started it. Each run's ``input``, ``result`` and ``error_traceback`` are
        None unless ``payloads`` is true (listings stay small without them).
        """
        request = workflow_service_pb2.ListRunsRequest(
            workflow_name=workflow.name if isinstance(workflow, Workflow) else workflow or "",
            statuses=[status_to_proto(s) for s in statuses or ()],
            parent_run_id=parent_run_id or "",
            page_size=page_size,
            include_payloads=payloads,
            idempotency_key=idempotency_key or "",
            schedule_id=schedule_id or "",
        )
        if created_after is not None:
            request.create_time_after.CopyFrom(to_timestamp(created_after))
        if created_before is not None:
            request.create_time_before.CopyFrom(to_timestamp(created_before))
        while True:
            response = await self._calls.call(self._calls.stub().ListRuns, request)
            for run in response.runs:
                yield run_info(run)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # -- operating runs: retry, fork, delete, bulk actions, workers ------------

    async def retry(
        self,
        run_id: str,
        *,
        deadline: datetime | None = None,
        clear_deadline: bool = False,
        reason: str = "",
    ) -> RunInfo:
        """Resume a failed or cancelled run where it stopped; return it (pending again).

        Its recorded steps are kept and replayed, not run again; the step that
        failed the run runs again (with a fresh retry budget), and the failure
        stays in the run's history, with a ``retried`` entry that names who
        retried. The run keeps its id, input, idempotency key and deadline: pass
        ``deadline`` for a new one, or ``clear_deadline=True``.

        Raises NotFoundError for an unknown run, FailedPreconditionError for a run
        that is not failed or cancelled or whose deadline has passed.
        """
        request = operations_pb2.RetryRunRequest(
            run_id=run_id, clear_deadline=clear_deadline, reason=reason
        )
        if deadline is not None:
            request.deadline.CopyFrom(to_timestamp(deadline))
        response = await self._calls.call(self._calls.stub().RetryRun, request)
        return run_info(response.run)

    async def fork(
        self,
        run_id: str,
        step_key: str,
        *,
        new_run_id: str | None = None,
        version: str | None = None,
        request_id: str | None = None,
        deadline: datetime | None = None,
    ) -> RunInfo:
        """Start a new run of a run's workflow and input whose journal is the
        original's up to and including the step ``step_key`` (its key as the
        history shows it, e.g. ``"charge"`` or ``"charge#2"``): the fork replays
        that much and runs every later step afresh. Returns the new run; its
        ``forked_from_run_id`` names the original, and both histories name the other.

        ``new_run_id`` is a custom id for the fork (default: the server picks one);
        ``version`` runs the fork on another version of the workflow (default:
        the original's); ``request_id`` makes a retried call harmless (the same
        id for the same run returns the fork it made).

        Raises NotFoundError for an unknown run, FailedPreconditionError when the
        run has no recorded step with that key.
        """
        request = operations_pb2.ForkRunRequest(
            run_id=run_id,
            step_key=step_key,
            new_run_id=new_run_id or "",
            workflow_version=version or "",
            request_id=request_id or "",
        )
        if deadline is not None:
            request.deadline.CopyFrom(to_timestamp(deadline))
        response = await self._calls.call(self._calls.stub().ForkRun, request)
        return run_info(response.run)

    async def delete_run(self, run_id: str) -> None:
        """Delete a finished run with its journal, waits and history.

        Raises NotFoundError for an unknown run, FailedPreconditionError for a run
        that has not finished (cancel it first).
        """
        request = operations_pb2.DeleteRunRequest(run_id=run_id)
        await self._calls.call(self._calls.stub().DeleteRun, request)

    async def cancel_runs(
        self,
        *,
        workflow: Workflow[Any, Any] | str | None = None,
        statuses: Iterable[RunStatus | str] | None = None,
        parent_run_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        reason: str = "",
        dry_run: bool = False,
        batch_size: int = 500,
        on_batch: Callable[[BulkResult], None] | None = None,
    ) -> BulkResult:
        """Cancel every unfinished run that ``list_runs`` with these filters would
        list, in batches of ``batch_size`` (one call each); with ``dry_run``, only
        count them. ``on_batch`` hears the running totals after each batch (for
        a progress bar). Safe to interrupt and call again: a second call
        changes only what the first left.
        """
        request = workflow_service_pb2.CancelRunsRequest(
            filter=_run_filter(workflow, statuses, parent_run_id, created_after, created_before),
            reason=reason,
            dry_run=dry_run,
            batch_size=batch_size,
        )
        return await self._bulk(self._calls.stub().CancelRuns, request, on_batch)

    async def retry_runs(
        self,
        *,
        workflow: Workflow[Any, Any] | str | None = None,
        statuses: Iterable[RunStatus | str] | None = None,
        parent_run_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        reason: str = "",
        dry_run: bool = False,
        batch_size: int = 500,
        on_batch: Callable[[BulkResult], None] | None = None,
    ) -> BulkResult:
        """Retry (as ``retry``) every failed or cancelled run that ``list_runs`` with
        these filters would list, in batches; with ``dry_run``, only count them.
        Runs whose deadline has passed are skipped."""
        request = workflow_service_pb2.RetryRunsRequest(
            filter=_run_filter(workflow, statuses, parent_run_id, created_after, created_before),
            reason=reason,
            dry_run=dry_run,
            batch_size=batch_size,
        )
        return await self._bulk(self._calls.stub().RetryRuns, request, on_batch)

    async def _bulk(
        self,
        method: Any,
        request: workflow_service_pb2.CancelRunsRequest | workflow_service_pb2.RetryRunsRequest,
        on_batch: Callable[[BulkResult], None] | None,
    ) -> BulkResult:
        total = BulkResult(0)
        while True:
            response = await self._calls.call(method, request)
            total = BulkResult(
                total.matched + response.matched,
                total.changed + response.changed,
                total.skipped + response.skipped,
            )
            if on_batch is not None:
                on_batch(total)
            if not response.next_page_token:
                return total
            request.page_token = response.next_page_token

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers connected to the server, to any of its replicas."""
        request = operations_pb2.ListWorkersRequest(page_size=1000)
        found: list[WorkerInfo] = []
        while True:
            response = await self._calls.call(self._calls.stub().ListWorkers, request)
            found += [worker_info(w) for w in response.workers]
            if not response.next_page_token:
                return found
            request.page_token = response.next_page_token

    # -- schedules -----------------------------------------------------------

    async def create_schedule(
        self,
        workflow: Workflow[Any, Any] | str,
        schedule: Schedule | str,
        *,
        schedule_id: str | None = None,
        version: str | int | None = None,
        paused: bool = False,
    ) -> ScheduleInfo:
        """Create a cron schedule that starts runs of a workflow (object or name).

        ``schedule`` is a ``Schedule`` (cron, time zone, input, overlap and catch-up
        policies) or just a cron string. ``schedule_id`` defaults to one the server
        assigns; creating the same id with the same settings again returns that
        schedule. Runs use the newest registered version unless ``version`` (or a
        workflow object's version) pins one.

        Raises InvalidArgumentError naming the field for a bad cron expression or
        an unknown time zone, AlreadyExistsError for an id taken by another schedule.
        """
        spec = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        if isinstance(workflow, Workflow):
            name, pinned = workflow.name, workflow.version if version is None else str(version)
            input_json = dump_input(spec.input, workflow.input_adapter)
        else:
            name, pinned = workflow, "" if version is None else str(version)
            input_json = dumps(spec.input)
        request = workflow_service_pb2.CreateScheduleRequest(
            schedule_id=schedule_id or "",
            workflow_name=name,
            workflow_version=pinned,
            spec=spec.to_proto(input_json),
            paused=paused,
        )
        response = await self._calls.call(self._calls.stub().CreateSchedule, request)
        return ScheduleInfo.from_proto(response.schedule)

    async def get_schedule(self, schedule_id: str, *, recent_runs: int = 10) -> ScheduleInfo:
        """A schedule with its next occasions and its ``recent_runs`` latest runs."""
        request = workflow_service_pb2.GetScheduleRequest(
            schedule_id=schedule_id, recent_runs=recent_runs
        )
        response = await self._calls.call(self._calls.stub().GetSchedule, request)
        return ScheduleInfo.from_proto(response.schedule)

    async def list_schedules(
        self, *, workflow: Workflow[Any, Any] | str | None = None, page_size: int = 100
    ) -> AsyncIterator[ScheduleInfo]:
        """Iterate over schedules by id (of one workflow if given), following pages."""
        request = workflow_service_pb2.ListSchedulesRequest(
            workflow_name=workflow.name if isinstance(workflow, Workflow) else workflow or "",
            page_size=page_size,
        )
        while True:
            response = await self._calls.call(self._calls.stub().ListSchedules, request)
            for schedule in response.schedules:
                yield ScheduleInfo.from_proto(schedule)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Pause a schedule: its occasions start nothing until it is resumed."""
        request = workflow_service_pb2.PauseScheduleRequest(schedule_id=schedule_id)
        response = await self._calls.call(self._calls.stub().PauseSchedule, request)
        return ScheduleInfo.from_proto(response.schedule)

    async def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Resume a paused schedule from its next occasion (the ones that passed
        while it was paused start nothing)."""
        request = workflow_service_pb2.ResumeScheduleRequest(schedule_id=schedule_id)
        response = await self._calls.call(self._calls.stub().ResumeSchedule, request)
        return ScheduleInfo.from_proto(response.schedule)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule (the runs it started stay). A workflow's declared schedule
        comes back when a worker of its newest version next connects: pause it, or
        remove it from the code, to stop it for good."""
        request = workflow_service_pb2.DeleteScheduleRequest(schedule_id=schedule_id)
        await self._calls.call(self._calls.stub().DeleteSchedule, request)

    async def trigger_schedule(
        self, schedule_id: str, *, request_id: str | None = None
    ) -> RunHandle[Any] | None:
        """Start a run of a schedule now, with its input; None when its overlap policy
        SKIP started nothing (the previous run is unfinished). The same
        ``request_id`` starts one run however often it is sent."""
        request = workflow_service_pb2.TriggerScheduleRequest(
            schedule_id=schedule_id, request_id=request_id or ""
        )
        response = await self._calls.call(self._calls.stub().TriggerSchedule, request)
        if response.skipped:
            return None
        return RunHandle(self._calls, response.run.run_id)

    # -- internals -----------------------------------------------------------

    def _trigger_request(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        *,
        run_id: str | None,
        idempotency_key: str | None,
        version: str | int | None,
        deadline: datetime | None,
        start_at: datetime | None,
        concurrency_key: str | None = None,
        priority: int | None = None,
        debounce_key: str | None = None,
    ) -> tuple[workflow_service_pb2.TriggerRequest, Any]:
        """The TriggerRequest of ``trigger`` and ``execute``, and the adapter of
        the workflow's result."""
        if isinstance(workflow, Workflow):
            name = workflow.name
            pinned = workflow.version if version is None else str(version)
            if workflow.input_param is None and input is not None:
                raise TypeError(f"workflow {name!r} takes no input")
            input_json = dump_input(input, workflow.input_adapter)
            adapter = workflow.result_adapter
        elif isinstance(workflow, str):
            name, pinned = workflow, "" if version is None else str(version)
            input_json, adapter = dumps(input), ANY_ADAPTER
        else:
            raise TypeError(f"expected a @workflow or a workflow name, got {workflow!r}")
        request = workflow_service_pb2.TriggerRequest(
            workflow_name=name,
            workflow_version=pinned,
            input=types_pb2.Payload(json=input_json),
            run_id=run_id or "",
            idempotency_key=idempotency_key or "",
            concurrency_key=concurrency_key or "",
            debounce_key=debounce_key or "",
        )
        if priority is not None:
            request.priority = priority
        if deadline is not None:
            if deadline.tzinfo is None:
                raise ValueError("deadline must be timezone-aware (e.g. datetime.now(UTC) + ...)")
            request.deadline.CopyFrom(to_timestamp(deadline))
        if start_at is not None:
            request.start_time.CopyFrom(to_timestamp(start_at))
        return request, adapter


def _outcome(run: types_pb2.Run, adapter: TypeAdapter[Any]) -> Any:
    """A finished run's result, validated by ``adapter``; RunFailedError or
    RunCancelledError when it did not complete."""
    if run.status == types_pb2.RUN_STATUS_COMPLETED:
        return loads(payload_text(run.result), adapter)
    if run.status == types_pb2.RUN_STATUS_FAILED:
        raise RunFailedError(run_info(run))
    raise RunCancelledError(run_info(run))


def _trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's W3C trace context as call metadata (none without
    OpenTelemetry or a span): the run joins the caller's trace."""
    trace = tracing.current_context()
    if trace is None:
        return ()
    if trace.tracestate:
        return (("traceparent", trace.traceparent), ("tracestate", trace.tracestate))
    return (("traceparent", trace.traceparent),)


def _run_filter(
    workflow: Workflow[Any, Any] | str | None,
    statuses: Iterable[RunStatus | str] | None,
    parent_run_id: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> workflow_service_pb2.ListRunsRequest:
    """The ListRuns filter of a bulk action."""
    request = workflow_service_pb2.ListRunsRequest(
        workflow_name=workflow.name if isinstance(workflow, Workflow) else workflow or "",
        statuses=[status_to_proto(s) for s in statuses or ()],
        parent_run_id=parent_run_id or "",
    )
    if created_after is not None:
        request.create_time_after.CopyFrom(to_timestamp(created_after))
    if created_before is not None:
        request.create_time_before.CopyFrom(to_timestamp(created_before))
    return request
