"""Shared pytest fixtures: real stepd server and worker processes.

``database`` is a fresh database per test, once per backend (SQLite, and
PostgreSQL when ``STEPD_TEST_POSTGRES_URL`` is set: see ``tests.backends``);
``stack`` starts processes for one test and stops them all afterwards;
``server`` is a fresh server (own database, free port); ``worker`` serves
``tests.e2e.workflows``; ``client`` is a connected ``stepd.Client`` and
``workflow_stub`` / ``worker_stub`` are the raw generated gRPC stubs.

Tests under ``tests/e2e/`` are marked ``slow`` (several processes): select
them with ``-m slow`` or skip them with ``-m "not slow"``; they run by default.
When a test fails, the logs of its processes are added to the report.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from tests.backends import BACKENDS, SKIP_POSTGRES, PostgresDatabases, postgres_url
from tests.e2e.harness import ManagedProcess, Server, Stack

if TYPE_CHECKING:
    from stepd import Client
    from stepd.v1.workflow_service_pb2_grpc import WorkflowServiceAsyncStub

STACK_KEY = pytest.StashKey[Stack]()
E2E_DIR = Path(__file__).parent / "e2e"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: half as many test processes again as there are cores. Most
    tests wait on servers and workers of their own (a third of the time the
    cores were idle with one process per core), so the suite ends sooner."""
    return max(2, (os.cpu_count() or 1) * 3 // 2)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses a database once per backend.

    A test (or module) marked ``sqlite_only`` runs on SQLite alone; without
    ``STEPD_TEST_POSTGRES_URL`` the PostgreSQL cases are skipped.
    """
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("sqlite_only"):
        backends = [BACKENDS[0]]
    else:
        backends = list(BACKENDS)
    skip = () if postgres_url() else (pytest.mark.skip(reason=SKIP_POSTGRES),)
    params = [pytest.param(b, marks=skip if b == "postgres" else ()) for b in backends]
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test case: "sqlite" or "postgres"."""
    return str(request.param)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Makes a fresh PostgreSQL database per test (created on first use)."""
    url = postgres_url()
    if url is None:
        pytest.skip(SKIP_POSTGRES)
    databases = PostgresDatabases(url)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for this test: a SQLite path or a PostgreSQL URL."""
    if backend == "sqlite":
        yield str(tmp_path / "stepd.db")
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create()
    try:
        yield url
    finally:
        _stop_processes_of(request)  # a server must not see its database dropped
        databases.drop(url)


@pytest.fixture
def pg_database(
    postgres_databases: PostgresDatabases, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database whatever the backend (replica
    tests; skipped without PostgreSQL)."""
    url = postgres_databases.create()
    try:
        yield url
    finally:
        _stop_processes_of(request)
        postgres_databases.drop(url)


@pytest.fixture
def empty_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database without any schema: a SQLite path or a PostgreSQL URL."""
    if backend == "sqlite":
        yield str(tmp_path / "empty.db")
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create(migrated=False)
    try:
        yield url
    finally:
        _stop_processes_of(request)
        databases.drop(url)


def _stop_processes_of(request: pytest.FixtureRequest) -> None:
    """Stop the test's processes now (the ``stack`` fixture still checks how
    they exited): pytest may tear the database down before the stack."""
    stack = request.node.stash.get(STACK_KEY, None)
    if stack is not None:
        stack.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``slow`` (multi-process)."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the test's processes to a failed test's report."""
    report = yield
    if report.failed:
        stack = item.stash.get(STACK_KEY, None)
        if stack is not None:
            for process in stack.processes:
                report.sections.append(
                    (f"{process.name} (pid {process.pid}) log", process.log_tail(80))
                )
    return report


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """The directory where test steps record each execution."""
    path = tmp_path / "marks"
    path.mkdir()
    return path


@pytest.fixture
def stack(tmp_path: Path, marks: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Starts processes for this test; stops them all (bounded) afterwards.

    Every process still running at the end must exit 0 on SIGTERM.
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    started = Stack(logs, marks_dir=marks)
    request.node.stash[STACK_KEY] = started
    try:
        yield started
    finally:
        codes = started.close()
    unclean = {name: code for name, code in codes.items() if code != 0}
    assert not unclean, f"processes did not stop cleanly on SIGTERM (exit codes): {unclean}"


@pytest.fixture
def server(stack: Stack, database: str) -> Server:
    """A fresh ``stepd serve`` on a free port with its own database."""
    return stack.start_server(database)


@pytest.fixture
def worker(stack: Stack, server: Server) -> ManagedProcess:
    """A ``stepd-worker tests.e2e.workflows`` connected to ``server``."""
    return stack.start_worker(server)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    """A connected SDK client."""
    from stepd import Client

    async with Client(server.address) as connected:
        yield connected


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    """A raw gRPC channel to ``server``."""
    async with grpc.aio.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture
def workflow_stub(channel: grpc.aio.Channel) -> WorkflowServiceAsyncStub:
    """The generated WorkflowService stub."""
    from stepd.v1 import workflow_service_pb2_grpc

    return workflow_service_pb2_grpc.WorkflowServiceStub(channel)


@pytest.fixture
def tag() -> str:
    """A unique label for this test's side effects."""
    return uuid.uuid4().hex[:12]
