"""The hot path's statements, run straight on the database driver.

SQLAlchemy's way to run a statement (the compiled-cache lookup, the parameters
built per call, the execution context and the result objects) cost 11 to 14
µs per statement on the development machine; the driver's own ``execute``
about 2 µs. A run's insert, claim, step records and end, its history entries
and ``get_run`` run several times per run, so a ``Direct`` compiles its
statement once per dialect and set of parameter names and hands the SQL and a
tuple of values to the DB-API connection itself, inside the transaction
SQLAlchemy began:

* SQLite: the pysqlite connection; its errors reach the group committer as
  they do through SQLAlchemy's ``exec_driver_sql``.
* PostgreSQL: a cursor of SQLAlchemy's asyncpg adapter, which starts the
  transaction, prepares and caches the statement and translates asyncpg's
  errors as it does for SQLAlchemy; a Direct wraps those errors in
  SQLAlchemy's ``DBAPIError`` (and invalidates a connection that was lost), so
  callers see what SQLAlchemy would have raised.

It goes the usual way whenever that is not the same thing: for a statement
whose types convert values (bind or result processors) or expand a list at
run time, and while anything listens to the engine's ``before_cursor_execute``
(a test capturing statements, an instrumentation), so listeners still see
every statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Delete, Insert, Select, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

#: The statements a Direct runs.
Statement = Select[Any] | Insert | Update | Delete

#: Where a positional value comes from: the caller's parameter of that name
#: (True) or a value fixed in the statement (False, the value).
_Source = tuple[str, bool, Any]


class _Plan:
    """The statement compiled for one dialect and one set of parameter names."""

    __slots__ = ("columns", "sources", "sql")

    def __init__(self, sql: str, sources: tuple[_Source, ...]) -> None:
        self.sql = sql
        self.sources = sources
        self.columns: tuple[str, ...] | None = None  # the result's names, once known

    def values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] if given else value for name, given, value in self.sources)


#: No plan: the statement goes through SQLAlchemy.
_USUAL = None

#: The drivers a Direct runs statements on, by dialect name.
_DRIVERS = {"sqlite": "pysqlite", "postgresql": "asyncpg"}


class Direct:
    """A Core statement that runs on the DB-API connection when nothing is lost by
    it (one ``Direct`` may serve stores on both databases: a plan per dialect)."""

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan | None] = {}

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        """The first row of the result, by column name (None when there is none)."""
        plan = self._plan(conn, params)
        if plan is None:
            return conn.execute(self.statement, params).mappings().first()
        cursor = _executed(conn, plan.sql, plan.values(params))
        try:
            found = cursor.fetchall()  # to the end: the statement is done with
            if not found:
                return None
            columns = plan.columns
            if columns is None:
                columns = plan.columns = tuple(entry[0] for entry in cursor.description)
            return dict(zip(columns, found[0], strict=True))
        finally:
            cursor.close()

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run the statement for its effect."""
        plan = self._plan(conn, params)
        if plan is None:
            conn.execute(self.statement, params)
            return
        _executed(conn, plan.sql, plan.values(params)).close()

    def _plan(self, conn: Connection, params: Mapping[str, Any]) -> _Plan | None:
        dialect = conn.dialect
        if _DRIVERS.get(dialect.name) != dialect.driver or conn.dispatch.before_cursor_execute:
            return _USUAL  # another driver, or someone watches statements
        key = (dialect.name, tuple(params))
        try:
            return self._plans[key]
        except KeyError:
            plan = self._plans[key] = _compile(self.statement, dialect, key[1])
            return plan


def _executed(conn: Connection, sql: str, values: tuple[Any, ...]) -> Any:
    """A DB-API cursor of ``conn`` that ran ``sql``. On PostgreSQL a failure raises
    what SQLAlchemy would: the driver's error wrapped in ``DBAPIError``, the
    connection invalidated when the error says it is lost."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    dialect = conn.dialect
    if dialect.name == "sqlite":
        return raw.execute(sql, values)
    cursor = raw.cursor()
    try:
        cursor.execute(sql, values)
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, raw, cursor)
        cursor.close()
        error = DBAPIError.instance(
            sql,
            values,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        )
        if lost:
            conn.invalidate(exc)
        raise error from exc
    return cursor


def _compile(statement: Statement, dialect: Dialect, names: tuple[str, ...]) -> _Plan | None:
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    order = compiled.positiontup
    if order is None:
        return _USUAL
    binds = compiled.binds
    sources: list[_Source] = []
    for name in order:
        bind = binds[name]
        if bind.expanding or bind.literal_execute:  # rendered per call (IN lists, LIMIT)
            return _USUAL
        if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            return _USUAL
        if name in names:
            sources.append((name, True, None))
        elif bind.callable is None and not bind.required:
            sources.append((name, False, bind.value))
        else:
            return _USUAL
    for column in getattr(statement, "exported_columns", ()):
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return _USUAL
    return _Plan(compiled.string, tuple(sources))
