"""Durable state: the ``Store`` interface and its SQL implementation.

Open a store with ``await open_store("stepd.db")``; the engine codes against
``stepd.server.store.base.Store``.
"""

from stepd.server.store.base import RunConflictError, Store
from stepd.server.store.errors import (
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    StoreValueError,
)
from stepd.server.store.factory import open_store
from stepd.server.store.file_lock import DatabaseInUseError
from stepd.server.store.migrations import SchemaVersionError
from stepd.server.store.sql_store import SqlStore

__all__ = [
    "DatabaseInUseError",
    "RunConflictError",
    "SchemaVersionError",
    "SqlStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
    "StoreValueError",
    "open_store",
]
