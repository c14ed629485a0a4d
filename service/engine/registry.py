"""Which workflow versions are registered, served, pinned or retired; which is current."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from stepd.server.domain import WorkflowVersion


class WorkflowRegistry:
    """In-memory view of the stored versions and pins, and of the versions that
    workers connected to this server serve.

    A workflow's *current* version takes the runs started without a version:
    the version an operator pinned; else the newest (most recently registered)
    version, not retired, that a connected worker serves. With neither, there is
    none: such a run is stored without a version and the first worker to claim
    it pins it to the newest version it serves. So a worker that registers a
    version and goes away never leaves runs waiting for a version nobody serves.
    """

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, int]] = {}
        self._retired: dict[tuple[str, str], int] = {}
        self._pins: dict[str, str] = {}
        self._served: Counter[tuple[str, str]] = Counter()
        # current() per workflow, until anything it depends on changes.
        self._current: dict[str, str | None] = {}

    def load(self, versions: Iterable[WorkflowVersion]) -> None:
        """Replace the view of stored versions (and which are retired)."""
        self._current.clear()
        self._versions.clear()
        self._retired.clear()
        for v in versions:
            self._versions.setdefault(v.name, {})[v.version] = v.first_seen
            if v.retire_time is not None:
                self._retired[(v.name, v.version)] = v.retire_time

    def merge(self, versions: Iterable[WorkflowVersion]) -> None:
        """Add stored versions not known here, and their retirements (registered
        or retired through another replica)."""
        self._current.clear()
        for v in versions:
            self._versions.setdefault(v.name, {}).setdefault(v.version, v.first_seen)
            if v.retire_time is not None:
                self._retired.setdefault((v.name, v.version), v.retire_time)

    def set_pins(self, pins: Mapping[str, str]) -> None:
        """Replace the pins (workflow name -> version) with the stored ones."""
        self._current.clear()
        self._pins = dict(pins)

    def add(self, pairs: Iterable[tuple[str, str]], first_seen: int) -> None:
        """Remember newly registered (name, version) pairs."""
        self._current.clear()
        for name, version in pairs:
            self._versions.setdefault(name, {}).setdefault(version, first_seen)

    def version_count(self, name: str) -> int:
        """How many versions of ``name`` are registered."""
        return len(self._versions.get(name, ()))

    def workflow_count(self) -> int:
        """How many workflows (names) are registered."""
        return len(self._versions)

    def knows(self, name: str, version: str) -> bool:
        """Whether (name, version) is registered."""
        return version in self._versions.get(name, {})

    def serving(self, pairs: Iterable[tuple[str, str]]) -> None:
        """A worker that serves ``pairs`` connected."""
        self._current.clear()
        self._served.update(pairs)

    def stopped_serving(self, pairs: Iterable[tuple[str, str]]) -> None:
        """A worker that served ``pairs`` went away."""
        self._current.clear()
        gone = list(pairs)
        self._served.subtract(gone)
        for pair in gone:
            if self._served.get(pair, 1) <= 0:
                del self._served[pair]

    def served_by(self, name: str, version: str) -> int:
        """How many connected workers serve (name, version)."""
        return self._served.get((name, version), 0)

    def serves(self, name: str, version: str) -> bool:
        """Whether a connected worker serves ``name`` at ``version`` (any version
        when ``version`` is empty)."""
        if version:
            return self.served_by(name, version) > 0
        return any(served == name for served, _ in self._served)

    def pin(self, name: str, version: str) -> None:
        """Pin ``name``'s current version (the store has it already)."""
        self._current.clear()
        self._pins[name] = version

    def unpin(self, name: str) -> None:
        """Remove ``name``'s pin."""
        self._current.clear()
        self._pins.pop(name, None)

    def pinned(self, name: str) -> str | None:
        """The version pinned for ``name``, if any."""
        return self._pins.get(name)

    def retire(self, name: str, version: str, when: int) -> None:
        """Mark a version retired (the store has it already)."""
        self._current.clear()
        self._retired.setdefault((name, version), when)

    def retired(self, name: str, version: str) -> bool:
        """Whether an operator retired (name, version)."""
        return (name, version) in self._retired

    def retire_time(self, name: str, version: str) -> int | None:
        """When (name, version) was retired, if it was."""
        return self._retired.get((name, version))

    def current(self, name: str) -> str | None:
        """The version that takes runs of ``name`` started without one (see the class)."""
        if name in self._current:
            return self._current[name]
        version = self._find_current(name)
        self._current[name] = version
        return version

    def _find_current(self, name: str) -> str | None:
        pinned = self._pins.get(name)
        if pinned is not None:
            return pinned
        versions = self._versions.get(name)
        if not versions:
            return None
        live = [
            (first_seen, version)
            for version, first_seen in versions.items()
            if self._served.get((name, version), 0) > 0 and (name, version) not in self._retired
        ]
        return max(live)[1] if live else None

    def current_versions(self) -> dict[str, str]:
        """Every workflow that has a current version here: name -> version."""
        current = {}
        for name in {*self._versions, *self._pins}:
            version = self.current(name)
            if version is not None:
                current[name] = version
        return current

    def pinnable(self, name: str, version: str) -> bool:
        """Whether a run stored without a version may be pinned to (name, version)
        by a worker that serves it: not when that version is retired."""
        return (name, version) not in self._retired

    def all_versions(self) -> list[WorkflowVersion]:
        """Every registered version, by name then registration."""
        return [
            WorkflowVersion(name, version, first_seen, self._retired.get((name, version)))
            for name in sorted(self._versions)
            for version, first_seen in sorted(
                self._versions[name].items(), key=lambda item: (item[1], item[0])
            )
        ]
