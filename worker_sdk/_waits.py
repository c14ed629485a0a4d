"""The durable waits a run's coroutine awaits now: sleeps, signals, events, hooks,
children and retry backoffs.

A call describes its waits when it is made (``WaitSpec``: the key, the call order
and what it waits for) and registers them as pending while it awaits them. The
waits of one call (a signal, event or hook wait and its timeout) share one future,
which resolves with the key of the wait that was met and its ``WaitResult``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stepd.v1 import types_pb2

Met = tuple[str, types_pb2.WaitResult]
"""A met wait: its key and its result."""


@dataclass(frozen=True, slots=True)
class EventWait:
    """What an event wait waits for: the event's name, the payload fields it must
    have (a JSON object, or empty for any) and when the wait began (Unix ns)."""

    name: str
    match_json: str
    since_ns: int


@dataclass(frozen=True, slots=True)
class WaitSpec:
    """One wait of a call, described when the call is made (its key and order fixed)."""

    key: str
    index: int  # call order: the order of the waits in suspend_run
    fire_ns: int = 0  # a timer's fire time (Unix ns); 0 for the other kinds
    signal: str | None = None  # a signal wait's signal name
    event: EventWait | None = None  # an event wait's condition
    hook: bool = False  # a hook wait
    child: str | None = None  # a child wait's child run id


class Waits:
    """The pending waits, by wait key, each with the future its call awaits."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[str, tuple[WaitSpec, asyncio.Future[Met]]] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, specs: Iterable[WaitSpec], future: asyncio.Future[Met]) -> None:
        """Register the waits of one call, which awaits ``future``."""
        for spec in specs:
            self._pending[spec.key] = (spec, future)

    def remove(self, specs: Iterable[WaitSpec]) -> None:
        """Drop the waits of one call (it stopped waiting)."""
        for spec in specs:
            self._pending.pop(spec.key, None)

    def future(self, key: str) -> asyncio.Future[Met] | None:
        """The future of the call that waits on ``key``, if one does."""
        pending = self._pending.get(key)
        return None if pending is None else pending[1]

    def in_call_order(self) -> list[WaitSpec]:
        """Every pending wait, in call order."""
        return sorted((spec for spec, _ in self._pending.values()), key=lambda s: s.index)

    def fail(self, error: Callable[[], BaseException]) -> None:
        """Raise ``error()`` in every call still waiting."""
        for _, future in list(self._pending.values()):
            if not future.done():  # the waits of one call share their future
                future.set_exception(error())

    def cancel(self) -> None:
        """Cancel every call's future (a waiting task of its own is cancelled too)."""
        for _, future in list(self._pending.values()):
            future.cancel()
