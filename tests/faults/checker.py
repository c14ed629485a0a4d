"""The guarantees every fault scenario must leave intact, checked after each one.

``check_guarantees`` reads the server's SQLite file (read-only), the step logs
the workers wrote (see ``tests/faults/workflows.py``) and each run through the
client, and asserts:

* every triggered run exists and is in its expected terminal status, as
  ``GetRun`` reports it and as stored; nothing is stuck: no run in the
  database is left pending, running or suspended;
* step records are unique per (run, step key), only keys the workflow can
  record are recorded, each recorded value equals the value derived from the
  run's input (first write wins and is never changed), a completed run has
  every step recorded and the result that follows from them;
* every recorded step's body ran at least once (the log has a line for it);
* no step body ran more often than its run was dispatched:
  ``executions(run, key) <= runs.dispatch_count``. A body runs only inside a
  dispatch (a claim under a new lease, which increments ``dispatch_count``),
  and one dispatch calls each step key at most once, replaying the keys its
  journal holds; so a body re-runs only when its run was handed out again
  (a worker crashed, hung past its lease, or the server restarted). When step
  retries exist the bound becomes ``dispatch_count * attempts``.

With ``snapshots`` (``take_snapshot`` right before a fault), also: every step
record and completed run committed at the snapshot is still there unchanged
(nothing committed, so nothing acknowledged, is lost or rewritten), and no
step recorded at the snapshot ran again afterwards (replay returns recorded
results instead of re-running the step). The log is read after the database,
so an execution it has not counted started after the record was committed.
Only for faults where no stale worker can start a step late: crashed workers
and servers; not a hung worker that wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepd import Client, RunStatus
from stepd.errors import ServerUnavailableError
from tests.e2e.harness import START_TIMEOUT, WORKER_READY, ManagedProcess, ProcessStartError
from tests.faults import workflows as wf

UNFINISHED = ("pending", "running", "suspended")
MAX_LISTED = 20  # problems listed in one assertion message


@dataclass(frozen=True)
class RunRow:
    """The columns of ``runs`` the checks use."""

    run_id: str
    workflow_name: str
    status: str
    input_json: str
    result_json: str | None
    dispatch_count: int


@dataclass(frozen=True)
class StepRow:
    """One row of ``steps``."""

    run_id: str
    step_key: str
    sequence: int
    attempt: int
    result_json: str | None
    error_type: str | None
    record_time: int


@dataclass(frozen=True)
class LogLine:
    """One line of a step log: a step body of ``run_id`` ran in process ``pid``."""

    run_id: str
    step_key: str
    pid: int


@dataclass
class Report:
    """What the checks saw, for scenario-specific assertions."""

    runs: dict[str, RunRow]
    steps: dict[tuple[str, str], StepRow]
    executions: list[LogLine]
    finishes: list[LogLine]
    problems: list[str] = field(default_factory=list)

    def executions_of(self, run_id: str) -> list[LogLine]:
        """The executions logged for one run, in log order."""
        return [line for line in self.executions if line.run_id == run_id]

    def finishes_of(self, run_id: str) -> list[LogLine]:
        """The finished executions logged for one run, in log order."""
        return [line for line in self.finishes if line.run_id == run_id]

    def recorded(self, run_id: str) -> dict[str, Any]:
        """The recorded step values of one run, by key."""
        return {
            key: _load(row.result_json)
            for (rid, key), row in self.steps.items()
            if rid == run_id and row.error_type is None
        }


# -- reading the database and the logs ---------------------------------------------


@contextlib.contextmanager
def read_only(database: Path | str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the server's SQLite file (WAL readers don't block it)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def read_runs(database: Path | str) -> dict[str, RunRow]:
    """Every run in the database, by id."""
    with read_only(database) as conn:
        rows = conn.execute(
            "SELECT run_id, workflow_name, status, input_json, result_json, dispatch_count "
            "FROM runs"
        ).fetchall()
    return {row[0]: RunRow(*row) for row in rows}


def read_steps(database: Path | str) -> dict[tuple[str, str], StepRow]:
    """Every step record, by (run id, step key)."""
    with read_only(database) as conn:
        rows = conn.execute(
            "SELECT run_id, step_key, sequence, attempt, result_json, error_type, record_time "
            "FROM steps"
        ).fetchall()
    return {(row[0], row[1]): StepRow(*row) for row in rows}


def duplicate_step_keys(database: Path | str) -> list[tuple[str, str, int]]:
    """(run id, step key, count) for every key recorded more than once."""
    with read_only(database) as conn:
        return conn.execute(
            "SELECT run_id, step_key, COUNT(*) FROM steps GROUP BY run_id, step_key "
            "HAVING COUNT(*) > 1"
        ).fetchall()


def unfinished_runs(database: Path | str) -> list[tuple[str, str]]:
    """(run id, status) of every run not in a terminal status."""
    with read_only(database) as conn:
        return conn.execute(
            "SELECT run_id, status FROM runs WHERE status IN (?, ?, ?)", UNFINISHED
        ).fetchall()


def read_log(log_dir: Path, name: str) -> list[LogLine]:
    """The lines of one step log (``wf.EXECUTIONS_LOG`` or ``wf.FINISHES_LOG``)."""
    path = log_dir / name
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        run_id, key, pid = text.split(" ")
        lines.append(LogLine(run_id, key, int(pid)))
    return lines


def _load(text: str | None) -> Any:
    return None if text in (None, "") else json.loads(text)


@dataclass(frozen=True)
class Snapshot:
    """What was committed and executed at one instant (see ``take_snapshot``)."""

    steps: dict[tuple[str, str], StepRow]
    completed: dict[str, RunRow]
    executions: Counter[tuple[str, str]]


def take_snapshot(database: Path | str, log_dir: Path) -> Snapshot:
    """Read the committed step records and completed runs, then the execution log."""
    steps = read_steps(database)
    completed = {r.run_id: r for r in read_runs(database).values() if r.status == "completed"}
    executions = Counter((x.run_id, x.step_key) for x in read_log(log_dir, wf.EXECUTIONS_LOG))
    return Snapshot(steps, completed, executions)


# -- driving load ------------------------------------------------------------------


async def trigger_all(
    client: Client,
    workflow: Any,
    inputs: Iterable[Any],
    *,
    parallel: int = 32,
    key_prefix: str | None = None,
    retry_for: float = 0.0,
) -> list[str]:
    """Trigger one run per input, ``parallel`` at a time; return the run ids in input order.

    With ``key_prefix``, run ``i`` gets the idempotency key ``<key_prefix>-<i>``
    and a trigger the server could not answer (UNAVAILABLE) is sent again for up
    to ``retry_for`` seconds: the key makes a retry return the run the first
    attempt may have created. (A client's first calls after a server restart
    fail fast until its channel reconnects.)
    """
    pending = list(inputs)
    run_ids: list[str] = [""] * len(pending)
    next_index = 0

    async def trigger_one(index: int) -> str:
        key = None if key_prefix is None else f"{key_prefix}-{index}"
        deadline = time.monotonic() + retry_for
        while True:
            try:
                handle = await client.trigger(workflow, pending[index], idempotency_key=key)
            except ServerUnavailableError:
                if key is None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            return handle.run_id

    async def trigger_some() -> None:
        nonlocal next_index
        while next_index < len(pending):
            index, next_index = next_index, next_index + 1
            run_ids[index] = await trigger_one(index)

    await asyncio.gather(*(trigger_some() for _ in range(parallel)))
    return run_ids


async def ready(process: ManagedProcess, *, within: float = START_TIMEOUT) -> ManagedProcess:
    """Wait, without blocking the event loop, until a worker started with
    ``wait=False`` printed its ready line.

    Start processes from the test's own thread, never through
    ``asyncio.to_thread``: they get SIGKILL when the thread that started them
    exits (PR_SET_PDEATHSIG is per thread), e.g. when the loop's executor shuts down.
    """
    deadline = time.monotonic() + within
    while not any(WORKER_READY.search(line) for line in process.log_text().splitlines()):
        if process.returncode is not None or time.monotonic() > deadline:
            raise ProcessStartError(
                f"worker {process.pid} not ready (exit code {process.returncode}); "
                f"log:\n{process.log_tail()}"
            )
        await asyncio.sleep(0.02)
    return process


async def settle(
    database: Path | str, run_ids: Iterable[str], *, within: float, only_these: bool = False
) -> None:
    """Wait until the given runs exist and no run in the database is unfinished
    (with ``only_these``: until the given runs are finished)."""
    wanted = set(run_ids)
    deadline = time.monotonic() + within
    while True:
        runs = read_runs(database)
        missing = wanted - runs.keys()
        open_runs = [
            r
            for r in runs.values()
            if r.status in UNFINISHED and (not only_these or r.run_id in wanted)
        ]
        if not missing and not open_runs:
            return
        if time.monotonic() > deadline:
            counts = Counter(r.status for r in open_runs)
            examples = [
                f"{r.run_id} ({r.status}, dispatched {r.dispatch_count}x)" for r in open_runs
            ]
            raise AssertionError(
                f"runs did not settle within {within:.0f}s: {len(missing)} missing "
                f"(e.g. {sorted(missing)[:5]}), "
                f"unfinished by status {dict(counts)}, e.g. {examples[:5]}"
            )
        await asyncio.sleep(0.1)


# -- the checks ----------------------------------------------------------------------


async def check_guarantees(
    client: Client,
    database: Path | str,
    log_dir: Path,
    expected_status: Mapping[str, RunStatus],
    *,
    others: RunStatus | None = None,
    snapshots: Iterable[Snapshot] = (),
) -> Report:
    """Assert every guarantee (see the module docstring); return what was seen.

    ``expected_status`` maps every triggered run to the terminal status it must
    be in. A run in the database that is not in it (a trigger that committed
    but whose answer was lost in a crash) is allowed only when ``others`` gives
    its expected status. ``snapshots`` were taken right before faults.
    """
    runs = read_runs(database)
    steps = read_steps(database)
    report = Report(
        runs=runs,
        steps=steps,
        executions=read_log(log_dir, wf.EXECUTIONS_LOG),
        finishes=read_log(log_dir, wf.FINISHES_LOG),
    )
    problems = report.problems

    # Every triggered run, as the server reports it; nothing stuck.
    infos = await _get_runs(client, [r for r in expected_status if r in runs])
    for run_id, status in expected_status.items():
        if run_id not in runs:
            problems.append(f"run {run_id}: triggered and acknowledged but not in the database")
            continue
        seen = infos[run_id].status
        if seen is not status or runs[run_id].status != status.value:
            problems.append(
                f"run {run_id}: expected {status.value}, GetRun says {seen.value}, "
                f"stored {runs[run_id].status}"
            )
    for run_id, stored in unfinished_runs(database):
        problems.append(f"run {run_id}: stuck in {stored}")
    for run_id, row in runs.items():
        if run_id not in expected_status:
            if others is None:
                problems.append(f"run {run_id}: in the database but never triggered")
            elif row.status != others.value:
                problems.append(f"run {run_id} (untracked): expected {others.value}: {row}")

    # Step records: unique, only known keys, the deterministic values.
    for run_id, key, count in duplicate_step_keys(database):
        problems.append(f"run {run_id}: step {key!r} recorded {count} times")
    finished_pids: dict[tuple[str, str], set[int]] = {}
    for line in report.finishes:
        finished_pids.setdefault((line.run_id, line.step_key), set()).add(line.pid)
    by_run: dict[str, dict[str, StepRow]] = {}
    for (run_id, key), step_row in steps.items():
        by_run.setdefault(run_id, {})[key] = step_row
    for run_id, row in runs.items():
        expect = wf.expected(row.workflow_name, json.loads(row.input_json))
        recorded: dict[str, Any] = {}
        for key, step_row in sorted(by_run.get(run_id, {}).items()):
            if key not in expect.steps:
                problems.append(f"run {run_id}: unexpected step key {key!r} recorded")
                continue
            if step_row.error_type is not None:
                problems.append(f"run {run_id}: step {key!r} recorded an error {step_row}")
                continue
            value = recorded[key] = _load(step_row.result_json)
            want = expect.steps[key]
            if want is wf.EXECUTOR_PID:
                if value not in finished_pids.get((run_id, key), set()):
                    problems.append(
                        f"run {run_id}: step {key!r} recorded pid {value}, which never "
                        f"finished it (finished in {finished_pids.get((run_id, key))})"
                    )
            elif value != want:
                problems.append(f"run {run_id}: step {key!r} recorded {value!r}, expected {want!r}")
        if row.status == RunStatus.COMPLETED.value:
            missing = sorted(set(expect.steps) - set(recorded))
            if missing:
                problems.append(f"run {run_id}: completed without recording {missing}")
            else:
                want_result = expect.result(recorded)
                stored_result = _load(row.result_json)
                if stored_result != want_result:
                    problems.append(
                        f"run {run_id}: stored result {stored_result!r}, expected {want_result!r}"
                    )
                if run_id in infos and infos[run_id].result != want_result:
                    problems.append(
                        f"run {run_id}: GetRun result {infos[run_id].result!r}, "
                        f"expected {want_result!r}"
                    )

    # At least once, and never more often than the run was dispatched.
    executions = Counter((line.run_id, line.step_key) for line in report.executions)
    for run_id, key in steps:
        if executions[(run_id, key)] < 1:
            problems.append(f"run {run_id}: step {key!r} recorded but its body never ran")
    for (run_id, key), count in sorted(executions.items()):
        dispatched = runs[run_id].dispatch_count if run_id in runs else None
        if dispatched is None:
            problems.append(f"run {run_id}: step {key!r} ran for a run that does not exist")
        elif count > dispatched:
            problems.append(
                f"run {run_id}: step {key!r} ran {count} times in {dispatched} dispatches"
            )

    # Nothing committed before a fault was lost, changed, or run again.
    for snap in snapshots:
        for step_id, step_row in snap.steps.items():
            now = steps.get(step_id)
            if now != step_row:
                problems.append(f"step {step_id} committed as {step_row}, now {now}")
            if executions[step_id] != snap.executions[step_id]:
                problems.append(
                    f"step {step_id} ran again after it was recorded: "
                    f"{snap.executions[step_id]} executions then, {executions[step_id]} now"
                )
        for run_id, run_row in snap.completed.items():
            if runs.get(run_id) != run_row:
                problems.append(f"run {run_id} completed as {run_row}, now {runs.get(run_id)}")

    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        )
        raise AssertionError(f"{len(problems)} guarantee violations:\n  {shown}{more}")
    return report


async def _get_runs(client: Client, run_ids: list[str], parallel: int = 32) -> dict[str, Any]:
    infos: dict[str, Any] = {}
    queue = list(run_ids)

    async def fetch() -> None:
        while queue:
            run_id = queue.pop()
            infos[run_id] = await client.get_run(run_id)

    await asyncio.gather(*(fetch() for _ in range(parallel)))
    return infos
