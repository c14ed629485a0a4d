"""Migrations build exactly the schema that ``service.store.schema`` declares."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, UniqueConstraint, create_engine, inspect, text
from sqlalchemy.types import TypeEngine

from service.store import SchemaVersionError, open_store
from service.store import migrations as migrations_module
from service.store.migrations import LATEST_VERSION, MIGRATIONS, Migration
from service.store.schema import metadata

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
    """A partial index's WHERE clause as text ("" for a full index)."""
    return "" if clause is None else str(clause)


def describe(engine: Engine) -> dict[str, Any]:
    """A comparable description of a database's schema, by reflection."""
    inspector = inspect(engine)
    tables: dict[str, Any] = {}
    for name in inspector.get_table_names():
        if name.startswith("sqlite_"):
            continue
        tables[name] = {
            "columns": [
                (c["name"], c["type"].compile(dialect=SQLITE), affinity(c["type"]), c["nullable"])
                for c in inspector.get_columns(name)
            ],
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    where_text(i.get("dialect_options", {}).get("sqlite_where")),
                )
                for i in inspector.get_indexes(name)
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


def declared() -> dict[str, Any]:
    """The same description, built from the MetaData without a database."""
    tables: dict[str, Any] = {}
    for table in metadata.sorted_tables:
        tables[table.name] = {
            "columns": [
                (c.name, c.type.compile(dialect=SQLITE), affinity(c.type), c.nullable)
                for c in table.columns
            ],
            "primary_key": [c.name for c in table.primary_key.columns],
            "indexes": sorted(
                (
                    i.name,
                    tuple(c.name for c in i.columns),
                    bool(i.unique),
                    where_text(i.dialect_options["sqlite"]["where"]),
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


async def migrated(path: Path) -> Engine:
    store = await open_store(str(path))
    await store.close()
    return create_engine(f"sqlite:///{path}")


async def test_migrations_build_the_declared_schema(tmp_path: Path) -> None:
    engine = await migrated(tmp_path / "migrated.db")
    direct = create_engine(f"sqlite:///{tmp_path / 'direct.db'}")
    metadata.create_all(direct)
    try:
        from_migrations = describe(engine)
        assert from_migrations == declared()
        assert from_migrations == describe(direct)
    finally:
        engine.dispose()
        direct.dispose()


def test_versions_are_contiguous_from_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == LATEST_VERSION
    assert all(m.description for m in MIGRATIONS)


async def test_reopening_applies_nothing_twice(db_path: Path) -> None:
    for _ in range(3):
        store = await open_store(str(db_path))
        await store.close()
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    db.close()
    assert rows == [(m.version,) for m in MIGRATIONS]


async def test_a_newer_database_is_refused(db_path: Path) -> None:
    store = await open_store(str(db_path))
    await store.close()
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, 'x', 0)",
            (LATEST_VERSION + 1,),
        )
    db.close()

    with pytest.raises(SchemaVersionError, match="upgrade stepd"):
        await open_store(str(db_path))


async def test_a_failing_migration_leaves_the_old_version(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(str(db_path))
    await store.close()

    def broken(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("migration bug")

    patched = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", broken))
    monkeypatch.setattr(migrations_module, "MIGRATIONS", patched)
    monkeypatch.setattr(migrations_module, "LATEST_VERSION", LATEST_VERSION + 1)

    with pytest.raises(RuntimeError, match="migration bug"):
        await open_store(str(db_path))

    with sqlite3.connect(db_path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    db.close()
    assert "half_done" not in tables
    assert version == LATEST_VERSION
