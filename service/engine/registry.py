"""Which workflow versions workers have registered, and which is newest."""

from __future__ import annotations

from collections.abc import Iterable

from stepd.server.domain import WorkflowVersion


class WorkflowRegistry:
    """In-memory view of the stored workflow_versions table.

    The newest version of a workflow is the one registered last (first seen
    most recently); a run triggered without a version is pinned to it.
    """

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, int]] = {}

    def load(self, versions: Iterable[WorkflowVersion]) -> None:
        """Replace the view with stored versions."""
        self._versions.clear()
        for v in versions:
            self._versions.setdefault(v.name, {})[v.version] = v.first_seen

    def add(self, pairs: Iterable[tuple[str, str]], first_seen: int) -> None:
        """Remember newly registered (name, version) pairs."""
        for name, version in pairs:
            self._versions.setdefault(name, {}).setdefault(version, first_seen)

    def knows(self, name: str, version: str) -> bool:
        """Whether (name, version) is registered."""
        return version in self._versions.get(name, {})

    def newest(self, name: str) -> str | None:
        """The most recently registered version of ``name``, if any."""
        versions = self._versions.get(name)
        if not versions:
            return None
        return max(versions.items(), key=lambda item: (item[1], item[0]))[0]
