"""The store's errors: what the engine may tell apart, without knowing the driver.

StoreError
├── StoreUnavailableError   the database cannot be reached or written now
│   │                       (connection refused or lost, database locked,
│   │                       disk full or read-only): the same write may
│   │                       succeed later
│   └── StoreClosedError    a read or write was submitted after the store
│                           started closing
└── StoreValueError         the database refused a value (out of range, a
                            character it cannot keep, a constraint): the same
                            write fails again

Each executor turns its driver's errors into these (``translate`` with the
backend's ``classify``) and chains the original, so the log keeps it.
Anything else a store method raises is a fault of the server.
"""

from __future__ import annotations

from collections.abc import Callable


class StoreError(Exception):
    """Base of the errors the store raises for database failures."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or written now; retry later."""


class StoreClosedError(StoreUnavailableError):
    """A read or write was submitted after the store started closing."""


class StoreValueError(StoreError):
    """The database refused a value of the write or read; the same one fails again."""


#: Says which store error a driver's exception is (None: not a database failure).
Classify = Callable[[BaseException], type[StoreError] | None]


def translate(exc: BaseException, classify: Classify) -> BaseException:
    """The store error for a driver's exception (``exc`` itself when it is none);
    its message is the first line of the driver's, cut short."""
    if isinstance(exc, StoreError):
        return exc
    kind = classify(exc)
    if kind is None:
        return exc
    first_line = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    error = kind(first_line[:200] or type(exc).__name__)
    error.__cause__ = exc
    return error
