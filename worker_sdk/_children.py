"""Child runs as workflow code sees them: ``ChildHandle`` and the child's outcome.

A child is started by ``ctx.start_child`` (or ``ctx.child``, which also waits
for it). The call takes the key ``child:N`` when it is made; the server creates
the child once, under a run id derived from the parent's and the key, and
records the start in the parent's journal, so a replay finds the same child.
Waiting on it is a durable wait (``child:N``): the parent is suspended, holding
no worker, until the child ends.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter

from stepd._serde import dumps, loads
from stepd.errors import ChildFailedError, NonDeterminismError, WorkflowContextError

R = TypeVar("R")


class ChildHandle(Generic[R]):
    """A child run started by ``ctx.start_child``: its ``run_id``, and ``await
    handle.result()`` for its result (a durable wait; raises ``ChildFailedError`` when
    the child failed or was cancelled)."""

    __slots__ = ("_busy", "_done", "_outcome", "_wait", "key", "run_id")

    def __init__(self, run_id: str, key: str, wait: Callable[[], Coroutine[Any, Any, R]]) -> None:
        self.run_id = run_id
        """The child's run id (``PARENT_RUN_ID/child:N``)."""
        self.key = key
        """The call's key in the parent's journal (``child:N``)."""
        self._wait = wait
        self._busy = False
        self._done = False
        self._outcome: tuple[R | None, BaseException | None] = (None, None)

    async def result(self) -> R:
        """Wait durably until the child ends; return its result (typed like the child
        workflow's return annotation) or raise ``ChildFailedError``."""
        if not self._done:
            if self._busy:
                raise WorkflowContextError(
                    f"{self.key}: handle.result() is already being awaited; await it once "
                    "(asyncio.gather the handles' results to wait for several children)"
                )
            self._busy = True
            try:
                self._outcome = (await self._wait(), None)
            except ChildFailedError as exc:
                self._outcome = (None, exc)
            finally:
                self._busy = False
            self._done = True
        value, error = self._outcome
        if error is not None:
            raise error
        return value  # type: ignore[return-value]  # None only with an error

    def __repr__(self) -> str:
        return f"ChildHandle(run_id={self.run_id!r}, key={self.key!r})"


def child_result(key: str, payload_json: str, adapter: TypeAdapter[Any]) -> Any:
    """The child's result from the parent's met wait, or raise ``ChildFailedError``."""
    outcome = loads(payload_json)
    if not isinstance(outcome, dict) or "status" not in outcome:
        raise NonDeterminismError(f"the journal's {key} holds {payload_json!r}, not a child's end")
    status = outcome["status"]
    run_id = str(outcome.get("run_id", ""))
    name = str(outcome.get("workflow_name", ""))
    if status == "completed":
        return loads(dumps(outcome.get("result")), adapter)
    if status == "failed":
        error = outcome.get("error") or {}
        error_type, error_message = str(error.get("type", "")), str(error.get("message", ""))
        what = f"failed: {error_type}: {error_message}"
    else:
        error_type, error_message = "stepd.Cancelled", str(outcome.get("reason", ""))
        what = f"was cancelled: {error_message}"
    raise ChildFailedError(
        f"child run {run_id} (workflow {name!r}) {what}",
        run_id=run_id,
        workflow_name=name,
        status=str(status),
        error_type=error_type,
        error_message=error_message,
    )
