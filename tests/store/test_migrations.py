"""Migrations build exactly the schema that ``stepd.server.store.schema`` declares,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlalchemy import Connection, Dialect, UniqueConstraint, create_engine, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.types import TypeEngine

from stepd.server.store import DatabaseInUseError, SchemaVersionError, open_store
from stepd.server.store import migrations as migrations_module
from stepd.server.store.migrations import LATEST_VERSION, MIGRATIONS, Migration
from stepd.server.store.postgres import async_url, is_postgres_url
from stepd.server.store.schema import metadata
from tests.backends import query, table_names

SQLITE = create_engine("sqlite://").dialect


def affinity(type_: TypeEngine[Any] | str) -> str:
    """SQLite's type affinity for a declared type (https://sqlite.org/datatype3.html)."""
    declared = type_ if isinstance(type_, str) else type_.compile(dialect=SQLITE)
    declared = declared.upper()
    if "INT" in declared:
        return "INTEGER"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in declared or not declared:
        return "BLOB"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def where_text(clause: Any) -> str:
    """A partial index's WHERE clause as comparable text ("" for a full index).

    PostgreSQL gives it back parenthesised and with casts: ``(type = 'x'::text)``.
    """
    if clause is None:
        return ""
    where = _unwrapped(re.sub(r"::\w+", "", str(clause)))
    # PostgreSQL reflects "x IN ('a', 'b')" as "x = ANY (ARRAY['a', 'b'])", and
    # parenthesises each term of an AND.
    where = re.sub(r"(\w+) = ANY \(ARRAY\[(.*?)\]\)", r"\1 IN (\2)", where)
    return " AND ".join(_unwrapped(term) for term in where.split(" AND "))


def _unwrapped(term: str) -> str:
    """``term`` without the parentheses wrapped around all of it."""
    term = term.strip()
    while term.startswith("(") and _closing(term) == len(term) - 1:
        term = term[1:-1].strip()
    return term


def _closing(text: str) -> int:
    """Where the parenthesis opened at ``text[0]`` closes (-1: never)."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index
    return -1


def describe(conn: Connection) -> dict[str, Any]:
    """A comparable description of a database's schema, by reflection."""
    dialect = conn.dialect
    inspector = inspect(conn)
    tables: dict[str, Any] = {}
    for name in inspector.get_table_names():
        if name.startswith("sqlite_"):
            continue
        tables[name] = {
            "columns": [
                (c["name"], c["type"].compile(dialect=dialect), affinity(c["type"]), c["nullable"])
                for c in inspector.get_columns(name)
            ],
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    where_text(i.get("dialect_options", {}).get(f"{dialect.name}_where")),
                )
                for i in inspector.get_indexes(name)
                if "duplicates_constraint" not in i  # PostgreSQL: a unique constraint's index
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(name)
            ),
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(name)
            ),
        }
    return tables


def declared(dialect: Dialect) -> dict[str, Any]:
    """The same description, built from the MetaData without a database."""
    tables: dict[str, Any] = {}
    for table in metadata.sorted_tables:
        tables[table.name] = {
            "columns": [
                (c.name, c.type.compile(dialect=dialect), affinity(c.type), c.nullable)
                for c in table.columns
            ],
            "primary_key": [c.name for c in table.primary_key.columns],
            "indexes": sorted(
                (
                    i.name,
                    tuple(c.name for c in i.columns),
                    bool(i.unique),
                    where_text(i.dialect_options[dialect.name]["where"]),
                )
                for i in table.indexes
            ),
            "unique": sorted(
                (u.name, tuple(c.name for c in u.columns))
                for u in table.constraints
                if isinstance(u, UniqueConstraint)
            ),
            "foreign_keys": sorted(
                (
                    tuple(c.name for c in fk.columns),
                    fk.referred_table.name,
                    tuple(e.column.name for e in fk.elements),
                )
                for fk in table.foreign_key_constraints
            ),
        }
    return tables


async def on(database: str, op: Any) -> Any:
    """Run a synchronous ``op(conn)`` in one transaction on ``database``."""
    if is_postgres_url(database):
        engine = create_async_engine(async_url(database))
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(op)
        finally:
            await engine.dispose()
    sync_engine = create_engine(f"sqlite:///{database}")
    try:
        with sync_engine.begin() as conn:
            return op(conn)
    finally:
        sync_engine.dispose()


async def applied_versions(database: str) -> list[int]:
    rows = await query(database, "SELECT version FROM schema_migrations ORDER BY version")
    return [version for (version,) in rows]


async def test_migrations_build_the_declared_schema(empty_database: str, database: str) -> None:
    store = await open_store(empty_database)
    await store.close()
    from_migrations = await on(empty_database, describe)
    assert from_migrations  # the reflection found the tables
    await on(database, lambda conn: metadata.drop_all(conn))
    await on(database, lambda conn: metadata.create_all(conn))
    direct = await on(database, describe)
    dialect = await on(database, lambda conn: conn.dialect)
    assert from_migrations == declared(dialect)
    assert from_migrations == direct


def test_versions_increase_from_one() -> None:
    versions = [m.version for m in MIGRATIONS]
    # Parallel branches reserve numbers: a gap is allowed, order and uniqueness are not.
    assert versions[0] == 1
    assert versions == sorted(set(versions))
    assert versions[-1] == LATEST_VERSION
    assert all(m.description for m in MIGRATIONS)


async def test_a_migration_arriving_below_the_newest_is_applied(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(empty_database)
    await store.close()
    missing = next(
        v for v in range(1, LATEST_VERSION + 2) if v not in {m.version for m in MIGRATIONS}
    )

    def late(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE arrived_late (x INTEGER)"))

    patched = tuple(
        sorted((*MIGRATIONS, Migration(missing, "late", late)), key=lambda m: m.version)
    )
    monkeypatch.setattr(migrations_module, "MIGRATIONS", patched)
    monkeypatch.setattr(migrations_module, "LATEST_VERSION", patched[-1].version)
    store = await open_store(empty_database)
    await store.close()

    assert "arrived_late" in await table_names(empty_database)
    versions = [
        row[0] for row in await query(empty_database, "SELECT version FROM schema_migrations")
    ]
    assert sorted(versions) == [m.version for m in patched]


async def test_reopening_applies_nothing_twice(empty_database: str) -> None:
    for _ in range(3):
        store = await open_store(empty_database)
        await store.close()
    assert await applied_versions(empty_database) == [m.version for m in MIGRATIONS]


async def test_servers_opening_at_once_migrate_once(empty_database: str) -> None:
    opened = await asyncio.gather(
        *(open_store(empty_database) for _ in range(4)), return_exceptions=True
    )
    stores = [s for s in opened if not isinstance(s, BaseException)]
    refused = [s for s in opened if isinstance(s, BaseException)]
    for store in stores:
        await store.close()
    if is_postgres_url(empty_database):
        assert len(stores) == 4  # replicas share one database
    else:  # one server per SQLite file: the others are refused
        assert len(stores) == 1
        assert all(isinstance(e, DatabaseInUseError) for e in refused), refused
    assert await applied_versions(empty_database) == [m.version for m in MIGRATIONS]


async def test_a_newer_database_is_refused(database: str) -> None:
    store = await open_store(database)
    await store.close()
    await query(
        database,
        "INSERT INTO schema_migrations (version, description, applied_at) "
        f"VALUES ({LATEST_VERSION + 1}, 'x', 0)",
    )

    with pytest.raises(SchemaVersionError, match="upgrade stepd"):
        await open_store(database)


async def test_a_failing_migration_leaves_the_old_version(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(database)
    await store.close()

    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("migration bug")

    patched = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", broken))
    monkeypatch.setattr(migrations_module, "MIGRATIONS", patched)
    monkeypatch.setattr(migrations_module, "LATEST_VERSION", LATEST_VERSION + 1)

    with pytest.raises(RuntimeError, match="migration bug"):
        await open_store(database)

    assert "half_done" not in await table_names(database)
    assert "runs" in await table_names(database)
    assert max(await applied_versions(database)) == LATEST_VERSION
