"""What ``GetRun`` tells beyond the run's row: the waits of a suspended run, as data.

A wait with a timeout is stored as two waits, the wait and the timer
``<key>:timeout`` beside it; here the timer is the wait's deadline, not a wait
of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stepd.server.domain import PendingWaitRow, RunRecord, RunStatus, WaitKind
from stepd.server.store.base import Store

_TIMEOUT_SUFFIX = ":timeout"


@dataclass(frozen=True, slots=True)
class PendingWait:
    """One thing a suspended run waits for."""

    wait_key: str
    kind: WaitKind
    since: int
    fire_time: int | None = None  # a timer's due time
    deadline: int | None = None  # when its timeout ends the wait
    name: str = ""  # a signal's or event's name
    match_json: str = ""  # an event wait's match
    hook_token: str = ""  # a hook wait's token, when the caller may see it
    child_run_id: str = ""


@dataclass(frozen=True, slots=True)
class RunDetails:
    """A run, what it waits for, and whether a worker here serves it."""

    run: RunRecord
    pending_waits: list[PendingWait]
    no_worker: bool


def describe_waits(
    run_id: str, rows: list[PendingWaitRow], hook_token: Callable[[str, str], str] | None
) -> list[PendingWait]:
    """The pending waits of a run from its open wait rows; ``hook_token(run_id,
    wait_key)`` gives a hook's token (None: leave tokens out)."""
    keys = {row.wait_key for row in rows}
    deadlines = {
        row.wait_key[: -len(_TIMEOUT_SUFFIX)]: row.fire_time
        for row in rows
        if row.kind is WaitKind.TIMER
        and row.wait_key.endswith(_TIMEOUT_SUFFIX)
        and row.wait_key[: -len(_TIMEOUT_SUFFIX)] in keys
    }
    waits = []
    for row in rows:
        key = row.wait_key
        if key.endswith(_TIMEOUT_SUFFIX) and key[: -len(_TIMEOUT_SUFFIX)] in keys:
            continue  # another wait's timeout: shown as its deadline
        kind = row.kind
        waits.append(
            PendingWait(
                wait_key=key,
                kind=kind,
                since=row.create_time,
                fire_time=row.fire_time if kind is WaitKind.TIMER else None,
                deadline=deadlines.get(key),
                name=(row.target or "") if kind in (WaitKind.SIGNAL, WaitKind.EVENT) else "",
                match_json=(row.match_json or "") if kind is WaitKind.EVENT else "",
                hook_token=(
                    hook_token(run_id, key) if kind is WaitKind.HOOK and hook_token else ""
                ),
                child_run_id=(row.target or "") if kind is WaitKind.CHILD else "",
            )
        )
    return waits


async def run_details(
    store: Store,
    run: RunRecord,
    served: Callable[[str, str], bool],
    hook_token: Callable[[str, str], str] | None,
) -> RunDetails:
    """The run with its pending waits (when suspended) and, when pending, whether
    ``served(workflow, version)`` says no worker here serves it."""
    waits: list[PendingWait] = []
    if run.status is RunStatus.SUSPENDED:
        waits = describe_waits(run.run_id, await store.pending_waits(run.run_id), hook_token)
    no_worker = run.status is RunStatus.PENDING and not served(
        run.workflow_name, run.workflow_version
    )
    return RunDetails(run, waits, no_worker)
