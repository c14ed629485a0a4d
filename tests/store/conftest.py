"""Fixtures for the store tests: a fresh database per test and backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stepd.server.domain import NewRun, now_ms
from stepd.server.store import SqlStore, open_store


def new_run(run_id: str, **overrides: Any) -> NewRun:
    """A NewRun with sensible defaults."""
    values: dict[str, Any] = {
        "run_id": run_id,
        "workflow_name": "orders",
        "workflow_version": "v1",
        "input_json": '{"n": 1}',
        "create_time": now_ms(),
    }
    values.update(overrides)
    return NewRun(**values)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "stepd.db"


@pytest.fixture
async def store(database: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(database)
    yield opened
    await opened.close()
