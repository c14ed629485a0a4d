"""Where one execution of a run stands (``Phase``) and how it ended (``RunOutcome``).

The phases and the moves between them (``RunExecutor`` makes every move)::

    RUNNING ──drain()──► DRAINING                (the two executing phases)
    from either:
      suspend_run sent ──► SUSPENDING ──acknowledged──► PARKED ──resume()──► RUNNING
                                                  └──► SUSPENDED ◄──evict()── PARKED
      complete_run / fail_run sent ──► FINISHING
      a journal the code cannot have produced ──► HELD
      abandon(), lease lost, a rejected command ──► ABANDONED
      release() (also from HELD) ──► RELEASED

A run held while its worker drains is released at once. ABANDONED, RELEASED and
SUSPENDED are *gone*: nothing more is sent for the run and late answers are ignored.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """Where one execution of a run stands."""

    RUNNING = "running"
    """Executing the workflow."""
    DRAINING = "draining"
    """Executing, but the worker shuts down: the step bodies in flight finish and are
    recorded, and the next new step releases the run instead of starting."""
    SUSPENDING = "suspending"
    """``suspend_run`` was sent; its answer decides."""
    PARKED = "parked"
    """``suspend_run`` was acknowledged and the coroutine is kept live at its waits
    (sticky execution): a continuation resumes it."""
    SUSPENDED = "suspended"
    """``suspend_run`` was acknowledged and the coroutine unwinds (``RunSuspended``)."""
    FINISHING = "finishing"
    """``complete_run`` or ``fail_run`` was sent."""
    HELD = "held"
    """Held as non-deterministic: the coroutine unwinds (``RunHeld``), nothing is sent
    until ``hold_run`` gives the run back."""
    ABANDONED = "abandoned"
    """Given up (lease lost, command rejected, cancelled): nothing more is sent."""
    RELEASED = "released"
    """``release_run`` was sent: nothing more is sent."""

    @property
    def executing(self) -> bool:
        """True while the workflow executes and may send commands (RUNNING, DRAINING)."""
        return self in _EXECUTING

    @property
    def gone(self) -> bool:
        """True once nothing more is sent for the run and late answers are ignored."""
        return self in _GONE

    @property
    def suspended(self) -> bool:
        """True once the server acknowledged ``suspend_run`` (PARKED, SUSPENDED)."""
        return self in _SUSPENDED

    @property
    def suspend_sent(self) -> bool:
        """True once ``suspend_run`` was sent (SUSPENDING, PARKED, SUSPENDED)."""
        return self in _SUSPEND_SENT

    @property
    def holds_new_work(self) -> bool:
        """True when a new step or child must not start: the worker drains or the run
        is being suspended."""
        return self in _HOLDS_NEW_WORK

    @property
    def may_give_back(self) -> bool:
        """True when ``release_run`` or ``hold_run`` may still be sent: no final command
        went out and the run was not given up."""
        return self in _MAY_GIVE_BACK


_EXECUTING = frozenset({Phase.RUNNING, Phase.DRAINING})
_GONE = frozenset({Phase.ABANDONED, Phase.RELEASED, Phase.SUSPENDED})
_SUSPENDED = frozenset({Phase.PARKED, Phase.SUSPENDED})
_SUSPEND_SENT = frozenset({Phase.SUSPENDING, Phase.PARKED, Phase.SUSPENDED})
_HOLDS_NEW_WORK = frozenset({Phase.DRAINING, *_SUSPEND_SENT})
_MAY_GIVE_BACK = frozenset({Phase.RUNNING, Phase.DRAINING, Phase.HELD})


class RunOutcome(enum.Enum):
    """How an execution of a run task ended."""

    COMPLETED = "completed"
    """``complete_run`` was acknowledged."""
    FAILED = "failed"
    """``fail_run`` was acknowledged."""
    ABANDONED = "abandoned"
    """The run was given up (lease lost, command rejected); nothing more is sent."""
    RELEASED = "released"
    """The run was given back to the queue (``release_run``, on shutdown)."""
    NON_DETERMINISTIC = "non_deterministic"
    """The journal holds steps or waits the code never called (or not in that order);
    nothing was sent to finish it."""
    SUSPENDED = "suspended"
    """``suspend_run`` was acknowledged: the server wakes the run when a wait is met."""
