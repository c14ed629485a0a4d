"""The keys a run's calls take: one count per kind, assigned when a call is made.

Steps are keyed by name (``charge``, ``charge#2``, ...), every other call by kind and
number (``sleep:1``, ``signal:2``, ``entry:3``, ``now:1``, ...). A key is assigned
synchronously at the call, so calls started together in ``asyncio.gather`` get the
same keys on every replay. The count of kind ``wait`` orders the durable waits.
"""

from __future__ import annotations


class Keys:
    """Counts a run's calls per kind, in call order."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def count(self, kind: str) -> int:
        """Count one more call of ``kind``; return its number (1 for the first)."""
        number = self._counts.get(kind, 0) + 1
        self._counts[kind] = number
        return number

    def key(self, kind: str) -> str:
        """The next key of ``kind``: ``KIND:N``."""
        return f"{kind}:{self.count(kind)}"

    def step_key(self, name: str) -> str:
        """The next key of step ``name``: ``name``, then ``name#2``, ``name#3``, ..."""
        number = self.count(f"step:{name}")  # never one of the other kinds: they have no ':'
        return name if number == 1 else f"{name}#{number}"
