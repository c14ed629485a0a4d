"""``Concurrency``: a workflow's limit on active runs per key, enforced by the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stepd.errors import WorkflowDefinitionError
from stepd.v1 import worker_service_pb2

Strategy = Literal["queue", "cancel_in_progress", "cancel_newest"]

_STRATEGIES = {
    "queue": worker_service_pb2.CONCURRENCY_STRATEGY_QUEUE,
    "cancel_in_progress": worker_service_pb2.CONCURRENCY_STRATEGY_CANCEL_IN_PROGRESS,
    "cancel_newest": worker_service_pb2.CONCURRENCY_STRATEGY_CANCEL_NEWEST,
}


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` active runs (started and not ended) per key.

    ``key`` is a dotted path into the run's JSON input (object keys and integer
    list indexes, e.g. ``"customer.id"`` or ``"items.0.sku"``); a missing path
    gives the key ``null``. ``Client.trigger(..., concurrency_key=...)`` may set
    a run's key explicitly. At the limit, ``strategy`` decides:

    - ``"queue"``: the new run waits (pending) and starts in order when the key
      has room;
    - ``"cancel_in_progress"``: the new run cancels the key's active (and older
      waiting) runs and starts once they ended;
    - ``"cancel_newest"``: the new run is refused (``Client.trigger`` raises
      ``StepdError``; a run an event, a schedule or a parent would start is not
      started).

    ``name`` (default: the workflow's name) lets several workflows share one
    limit; they must declare the same ``limit`` and ``strategy``.
    """

    key: str
    limit: int = 1
    strategy: Strategy = "queue"
    name: str | None = None

    def check(self, what: str) -> None:
        """Raise WorkflowDefinitionError naming ``what`` when a setting is wrong."""
        if not isinstance(self.key, str):
            raise WorkflowDefinitionError(f"{what}: concurrency key must be a str path")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise WorkflowDefinitionError(
                f"{what}: concurrency limit must be an int of at least 1, got {self.limit!r}"
            )
        if self.strategy not in _STRATEGIES:
            raise WorkflowDefinitionError(
                f"{what}: concurrency strategy must be one of {', '.join(_STRATEGIES)}, "
                f"got {self.strategy!r}"
            )
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise WorkflowDefinitionError(f"{what}: concurrency name must be a non-empty str")

    def to_proto(self, workflow_name: str) -> worker_service_pb2.ConcurrencyLimit:
        """The limit as the worker's hello declares it."""
        return worker_service_pb2.ConcurrencyLimit(
            name=self.name or workflow_name,
            key_path=self.key,
            limit=self.limit,
            strategy=_STRATEGIES[self.strategy],
        )


def check_concurrency(value: object, what: str) -> Concurrency | None:
    """A workflow's ``concurrency=`` option, checked."""
    if value is None:
        return None
    if not isinstance(value, Concurrency):
        raise WorkflowDefinitionError(f"{what}: concurrency must be a stepd.Concurrency")
    value.check(what)
    return value
