"""Errors raised by the store besides those of ``stepd.server.store.base``."""

from __future__ import annotations


class StoreClosedError(Exception):
    """A read or write was submitted after the store started closing."""
