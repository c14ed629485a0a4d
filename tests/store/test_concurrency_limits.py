"""Concurrency per key in the store: the key read from the input, admission in
the insert's transaction (never over the limit, also with concurrent
transactions on PostgreSQL), waiting runs never handed out, the oldest
admitted when a run ends, refusals, and shared limit names."""

from __future__ import annotations

import asyncio

import pytest

from stepd.server.domain import ConcurrencySpec, ConcurrencyStrategy, RunStatus, now_ms
from stepd.server.engine.transitions import RunEvent, move
from stepd.server.store import SqlStore
from stepd.server.store.base import ConcurrencyRefusedError
from stepd.server.store.concurrency import MAX_KEY_CHARS, KeyCheck, key_from_input

from .conftest import new_run


@pytest.mark.parametrize(
    ("input_json", "path", "key"),
    [
        ('{"customer": {"id": "c1"}}', "customer.id", "c1"),
        ('{"customer": {"id": 7}}', "customer.id", "7"),
        ('{"items": [{"sku": "a"}, {"sku": "b"}]}', "items.1.sku", "b"),
        ('{"items": [{"sku": "a"}]}', "items.5.sku", "null"),
        ('{"customer": {}}', "customer.id", "null"),
        ('{"a": {"b": [1, true]}}', "a", '{"b":[1,true]}'),
        ('"whole"', "", "whole"),
        ("null", "x", "null"),
    ],
)
def test_the_key_is_read_at_a_dotted_path(input_json: str, path: str, key: str) -> None:
    assert key_from_input(input_json, path) == key


def test_a_long_or_nul_key_is_hashed() -> None:
    long_key = key_from_input('{"k": "' + "x" * (MAX_KEY_CHARS + 1) + '"}', "k")
    assert long_key.startswith("sha256:") and len(long_key) == 71
    assert key_from_input('{"k": "a\\u0000b"}', "k").startswith("sha256:")


def limited(limit: int, strategy: ConcurrencyStrategy = ConcurrencyStrategy.QUEUE) -> dict:
    return {"orders": ConcurrencySpec("orders", "customer", limit, strategy)}


async def test_concurrent_creates_admit_no_more_than_the_limit(store: SqlStore) -> None:
    assert await store.declare_concurrency(limited(2), now_ms()) is None
    outcomes = await asyncio.gather(
        *(store.create_run(new_run(f"r{i}", input_json='{"customer": "c"}')) for i in range(20))
    )
    admitted = {o.run.run_id for o in outcomes if o.run.admitted}
    assert len(admitted) == 2
    assert all(o.run.concurrency_key == "c" for o in outcomes)
    waiting = sorted((o.run for o in outcomes if not o.run.admitted), key=lambda r: r.seq)
    # A waiting run is never handed out.
    assert await store.claim_run(waiting[0].run_id, "w", now_ms() + 60_000) is None
    ready = await store.ready_runs([("orders", "")], 100)
    assert {run.run_id for run in ready} == admitted
    assert await store.concurrency_waiting_keys(10) == [("orders", "c")]
    assert await store.concurrency_queue_position(waiting[3]) == (3, 2, 2)
    # Nothing to admit while both slots are taken.
    check = await store.check_concurrency_key("orders", "c", now_ms())
    assert check.admitted == () and check.to_cancel == ()
    # One ends: the write that ends it admits the oldest waiting run, and only
    # that one, and tells the listener after the commit.
    checks: list[tuple[str, str, KeyCheck]] = []
    store.on_key_checked(lambda name, key, check: checks.append((name, key, check)))
    first = sorted(admitted)[0]
    await store.cancel_run(first, move(RunEvent.CANCEL), "done")
    assert [(name, key) for name, key, _ in checks] == [("orders", "c")]
    assert [run.run_id for run in checks[0][2].admitted] == [waiting[0].run_id]
    assert checks[0][2].waiting
    # Nothing more to admit: both slots are taken again.
    check = await store.check_concurrency_key("orders", "c", now_ms())
    assert check.admitted == ()
    claimed = await store.claim_run(waiting[0].run_id, "w", now_ms() + 60_000)
    assert claimed is not None and claimed.run.status is RunStatus.RUNNING


async def test_cancel_newest_refuses_and_an_idempotent_retry_finds_its_run(
    store: SqlStore,
) -> None:
    strategy = ConcurrencyStrategy.CANCEL_NEWEST
    assert await store.declare_concurrency(limited(1, strategy), now_ms()) is None
    first = await store.create_run(new_run("a", input_json='{"customer": 1}', idempotency_key="k"))
    assert first.run.admitted
    with pytest.raises(ConcurrencyRefusedError, match="key '1'"):
        await store.create_run(new_run("b", input_json='{"customer": 1}'))
    again = await store.create_run(new_run("a2", input_json='{"customer": 1}', idempotency_key="k"))
    assert again.run.run_id == "a" and not again.created
    # An explicit key is another key.
    other = await store.create_run(
        new_run("c", input_json='{"customer": 1}', concurrency_key="mine")
    )
    assert other.run.admitted and other.run.concurrency_key == "mine"


async def test_cancel_in_progress_names_the_runs_a_newer_one_replaces(store: SqlStore) -> None:
    strategy = ConcurrencyStrategy.CANCEL_IN_PROGRESS
    assert await store.declare_concurrency(limited(1, strategy), now_ms()) is None
    runs = [
        (await store.create_run(new_run(f"r{i}", input_json='{"customer": 1}'))).run
        for i in range(3)
    ]
    assert [run.admitted for run in runs] == [True, False, False]
    check = await store.check_concurrency_key("orders", "1", now_ms())
    assert check.admitted == ()
    assert sorted(check.to_cancel) == ["r0", "r1"]


async def test_one_limit_name_with_two_settings_is_refused(store: SqlStore) -> None:
    specs = {
        "a": ConcurrencySpec("shared", "k", 1),
        "b": ConcurrencySpec("shared", "k", 2),
    }
    conflict = await store.declare_concurrency(specs, now_ms())
    assert conflict is not None and "'a' and 'b'" in conflict
    assert await store.declare_concurrency({"a": specs["a"]}, now_ms()) is None
    conflict = await store.declare_concurrency({"b": specs["b"]}, now_ms())
    assert conflict is not None and "'shared'" in conflict
    # A workflow without a limit any more frees the name.
    assert await store.declare_concurrency({"a": None}, now_ms()) is None
    assert await store.declare_concurrency({"b": specs["b"]}, now_ms()) is None


async def test_a_changed_declaration_applies_to_the_next_insert(store: SqlStore) -> None:
    from stepd.server.domain_flow import FlowSettings

    # Read once without declarations (SQLite's writer remembers what it read) ...
    first = await store.create_run(new_run("before", input_json='{"customer": "c"}'))
    assert first.run.concurrency_name is None and first.run.priority in (None, 0)
    # ... then each declaration is seen by the very next insert.
    assert await store.declare_concurrency(limited(1), now_ms()) is None
    await store.declare_flow({"orders": FlowSettings(priority=7)}, now_ms())
    second = await store.create_run(new_run("limited", input_json='{"customer": "c"}'))
    assert second.run.concurrency_name == "orders" and second.run.priority == 7
    assert await store.declare_concurrency({"orders": None}, now_ms()) is None
    await store.declare_flow({"orders": FlowSettings()}, now_ms())
    third = await store.create_run(new_run("free", input_json='{"customer": "c"}'))
    assert third.run.concurrency_name is None and third.run.priority in (None, 0)
