"""Limits the server enforces on the runs it has handed out.

Two things a worker cannot be trusted to stop on its own: a step attempt that
outlives its timeout because the worker hung or vanished (its stream still
open, or not yet noticed), and a journal that grows without bound, in entries
or in bytes (a run task carries the whole journal to every worker). Both are
tracked here, in memory, per run held by a worker; nothing is stored, since a
server restart hands every run out again and the tracking restarts with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stepd.server.domain import ClaimedRun

#: How long past a step's timeout the server waits for the worker's own report
#: before it ends the attempt itself.
STEP_TIMEOUT_GRACE_MS = 2_000


@dataclass(frozen=True, slots=True)
class OpenAttempt:
    """A step attempt announced with ``start_step`` and not recorded yet."""

    run_id: str
    lease_id: int
    step_key: str
    attempt: int
    timeout_ms: int
    started_at: int

    @property
    def overdue_at(self) -> int:
        """When the server ends the attempt if the worker has not reported it."""
        return self.started_at + self.timeout_ms + STEP_TIMEOUT_GRACE_MS


@dataclass(slots=True)
class _Journal:
    entries: int
    limit: int
    size: int  # bytes of step results and met waits' payloads


def step_bytes(result_json: str | None, message: str = "", traceback: str = "") -> int:
    """How many bytes (characters) a step outcome adds to its run's journal."""
    return len(result_json or "") + len(message) + len(traceback)


def journal_bytes(claimed: ClaimedRun) -> int:
    """The bytes of step results, errors and met waits' payloads a claimed run's
    task carries."""
    size = 0
    for step in claimed.journal:
        error = step.error
        if error is None:
            size += step_bytes(step.result_json)
        else:
            size += step_bytes(None, error.message, error.traceback)
    return size + sum(len(wait.payload_json or "") for wait in claimed.waits)


class RunLimits:
    """Open step attempts and journal sizes of the runs workers hold."""

    def __init__(self, default_max_entries: int, max_bytes: int) -> None:
        self.default_max_entries = default_max_entries
        self.max_bytes = max_bytes
        self._journals: dict[str, _Journal] = {}
        self._attempts: dict[tuple[str, str], OpenAttempt] = {}
        self._keys_by_run: dict[str, set[str]] = {}

    def hold(
        self, run_id: str, journal_entries: int, max_entries: int | None, journal_bytes: int = 0
    ) -> None:
        """A run was handed out with ``journal_entries`` entries (``journal_bytes``
        bytes of payloads) in its journal."""
        limit = max_entries or self.default_max_entries
        self._journals[run_id] = _Journal(journal_entries, limit, journal_bytes)

    def release(self, run_id: str) -> None:
        """The worker no longer holds the run: forget its tracking."""
        self._journals.pop(run_id, None)
        for key in self._keys_by_run.pop(run_id, ()):
            self._attempts.pop((run_id, key), None)

    def entries(self, run_id: str) -> int | None:
        """The run's journal size as tracked since its dispatch; None when not held."""
        journal = self._journals.get(run_id)
        return journal.entries if journal is not None else None

    def limit(self, run_id: str) -> int:
        """The run's maximum journal size."""
        journal = self._journals.get(run_id)
        return journal.limit if journal is not None else self.default_max_entries

    def size(self, run_id: str) -> int:
        """The bytes of the run's journal as tracked since its dispatch (0 when not held)."""
        journal = self._journals.get(run_id)
        return journal.size if journal is not None else 0

    def fits(self, run_id: str, more_bytes: int) -> bool:
        """Whether the run's journal has room for ``more_bytes`` more bytes."""
        journal = self._journals.get(run_id)
        return journal is None or journal.size + more_bytes <= self.max_bytes

    def full(self, run_id: str) -> bool:
        """Whether the run's journal has no room for another entry."""
        journal = self._journals.get(run_id)
        return journal is not None and journal.entries >= journal.limit

    def added(self, run_id: str, count: int = 1, size: int = 0) -> None:
        """Entries (of ``size`` bytes in all) were recorded in the run's journal."""
        journal = self._journals.get(run_id)
        if journal is not None:
            journal.entries += count
            journal.size += size

    def attempt_started(self, attempt: OpenAttempt) -> None:
        """A step attempt with a timeout started (``start_step``)."""
        self._attempts[(attempt.run_id, attempt.step_key)] = attempt
        self._keys_by_run.setdefault(attempt.run_id, set()).add(attempt.step_key)

    def attempt_ended(self, run_id: str, step_key: str) -> None:
        """The step's attempt was recorded (whatever its outcome)."""
        if self._attempts.pop((run_id, step_key), None) is not None:
            keys = self._keys_by_run.get(run_id)
            if keys is not None:
                keys.discard(step_key)

    def postpone_attempts(self, ms: int) -> None:
        """The server did not run for ``ms``: no open attempt is overdue for that time."""
        for key, attempt in self._attempts.items():
            self._attempts[key] = replace(attempt, started_at=attempt.started_at + ms)

    def overdue(self, now: int) -> list[OpenAttempt]:
        """Open attempts past their timeout and grace, oldest first."""
        late = [a for a in self._attempts.values() if a.overdue_at <= now]
        return sorted(late, key=lambda a: a.overdue_at)
