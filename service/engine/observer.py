"""What the engine tells observers (metrics, traces) as runs and steps move.

An observer is any object with these four methods; the engine calls them after
the store committed what they report, on the event loop, so each must be cheap
and must not raise. The engine never imports an observer's module: the server
hands one in with ``Engine.observe``.
"""

from __future__ import annotations

from typing import Protocol

from stepd.server.domain import RunRecord, StepRow


class EngineObserver(Protocol):
    """Hears of runs made ready, handed out and ended, and of recorded steps."""

    def run_ready(self, run: RunRecord) -> None:
        """``run`` was queued here for any worker serving it."""

    def run_handed_out(self, run: RunRecord) -> None:
        """``run`` was claimed for a worker (``run.dispatch_count`` 1: its first start)."""

    def run_ended(self, run: RunRecord) -> None:
        """``run`` completed, failed or was cancelled here."""

    def step_recorded(self, step: StepRow) -> None:
        """A worker's step outcome (or failed attempt) was recorded."""
