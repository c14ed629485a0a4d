"""Child-run calls: ``ctx.start_child`` / ``ctx.child`` inside a run.

A call takes the key ``child:N`` when it is made. Its first execution waits at the
journal's gate like a new step and sends ``start_child``; the server creates the
child once and records its start in the journal, so a replay reads the child's run
id back instead. Waiting for the child is the durable wait ``child:N``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from pydantic import TypeAdapter

from stepd import _commands as commands
from stepd import _tracing as tracing
from stepd._children import ChildHandle
from stepd._control import RunControl
from stepd._journal import Journal
from stepd._keys import Keys
from stepd._serde import loads, payload_text
from stepd._settle import Settler
from stepd._wait_calls import WaitCalls
from stepd.errors import NonDeterminismError, StepdError
from stepd.v1 import types_pb2


class ChildCalls:
    """Starts the child runs of one run."""

    __slots__ = ("_journal", "_keys", "_run", "_settler", "_waits")

    def __init__(
        self, run: RunControl, journal: Journal, keys: Keys, settler: Settler, waits: WaitCalls
    ) -> None:
        self._run = run
        self._journal = journal
        self._keys = keys
        self._settler = settler
        self._waits = waits

    def call(
        self,
        workflow_name: str,
        version: str,
        input_json: str,
        *,
        detached: bool,
        adapter: TypeAdapter[Any],
    ) -> Coroutine[Any, Any, ChildHandle[Any]]:
        """Assign the call its key now (``child:N``); the coroutine starts the child
        (``start_child``, once: a replay reads the journal's entry) and yields its
        handle."""
        key = self._keys.key("child")
        self._settler.touch()
        record = self._journal.take(key)
        return self._start(key, workflow_name, version, input_json, detached, adapter, record)

    async def _start(
        self,
        key: str,
        workflow_name: str,
        version: str,
        input_json: str,
        detached: bool,
        adapter: TypeAdapter[Any],
        record: types_pb2.StepRecord | None,
    ) -> ChildHandle[Any]:
        run = self._run
        if record is None:
            await run.gate(key)
            if run.phase.holds_new_work:
                await run.park()
            run.check_live()
            command = commands.start_child(
                key,
                workflow_name,
                version,
                input_json,
                detached=detached,
                trace=tracing.current_context(),
            )
            with run.in_flight():
                result = await run.submit_in_order(command)
            record = result.recorded_step
        else:
            run.check_live()
        try:
            child_id = str(loads(payload_text(record.result))["run_id"])
        except (StepdError, TypeError, KeyError) as exc:
            raise NonDeterminismError(
                f"the journal's {key} holds {payload_text(record.result)!r}, not a child run"
            ) from exc
        waits = self._waits
        return ChildHandle(child_id, key, lambda: waits.child(key, child_id, adapter))
