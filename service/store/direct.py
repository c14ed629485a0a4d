"""The hot path's statements, run straight on SQLite's driver.

SQLAlchemy's way to run a statement (the compiled-cache lookup, the parameters
built per call, the result objects) cost 11 to 14 µs per statement on the
development machine; the driver's own ``execute`` about 2 µs. A run's insert,
claim, step records and end, its history entries and ``get_run`` run several
times per run, so on SQLite a ``Direct`` compiles its statement once per set
of parameter names and hands the SQL and a tuple of values to the pysqlite
connection itself, inside the transaction SQLAlchemy began.

It goes the usual way whenever that is not the same thing: on PostgreSQL, for
a statement whose types convert values (bind or result processors) or expand
a list at run time, and while anything listens to the engine's
``before_cursor_execute`` (a test capturing statements, an instrumentation),
so listeners still see every statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Delete, Insert, Select, Update
from sqlalchemy.engine import Dialect

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


class Direct:
    """A Core statement that runs on SQLite's driver when nothing is lost by it
    (one ``Direct`` may serve stores on both databases: plans are SQLite's only)."""

    __slots__ = ("_plans", "statement")

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, ...], _Plan | None] = {}

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Mapping[Any, Any] | None:
        """The first row of the result, by column name (None when there is none)."""
        plan = self._plan(conn, params)
        if plan is None:
            return conn.execute(self.statement, params).mappings().first()
        cursor = conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
            plan.sql, plan.values(params)
        )
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
        conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
            plan.sql, plan.values(params)
        ).close()

    def _plan(self, conn: Connection, params: Mapping[str, Any]) -> _Plan | None:
        if conn.dialect.name != "sqlite" or conn.dispatch.before_cursor_execute:
            return _USUAL  # another database, or someone watches statements
        names = tuple(params)
        try:
            return self._plans[names]
        except KeyError:
            plan = self._plans[names] = _compile(self.statement, conn.dialect, names)
            return plan


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
