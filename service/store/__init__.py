"""Durable state: the ``Store`` interface and its SQL implementation.

Open a store with ``await open_store("stepd.db")``; the engine codes against
``service.store.base.Store``.
"""

from service.store.base import RunConflictError, Store
from service.store.errors import StoreClosedError
from service.store.factory import open_store
from service.store.migrations import SchemaVersionError
from service.store.sql_store import SqlStore

__all__ = [
    "RunConflictError",
    "SchemaVersionError",
    "SqlStore",
    "Store",
    "StoreClosedError",
    "open_store",
]
