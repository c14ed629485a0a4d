"""The HTTP listener of a real ``stepd serve``: probes, Prometheus metrics that
follow real runs, hooks and events posted as webhooks, keys and signatures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stepd import Client, RunStatus
from stepd.errors import NotFoundError
from stepd.server.http.event_signatures import sign
from tests.e2e import workflows as wf
from tests.e2e.harness import ROOT, Server, Stack
from tests.e2e.test_hooks import token_of
from tests.e2e.test_security import admin_key, stepd
from tests.e2e.test_signals import RESULT_TIMEOUT, wait_for_status

EVENT_SECRET = "e" * 64


async def fetch(
    method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One HTTP request; the status and the body's text."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers=headers or {}) as answer,
    ):
        return answer.status, await answer.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_probes_and_metrics_follow_real_runs(
    server: Server, worker: object, client: Client, tag: str
) -> None:
    url = server.http_url
    assert await fetch("GET", f"{url}/healthz") == (200, '{"status": "ok"}')
    assert await fetch("GET", f"{url}/readyz") == (200, '{"status": "ready"}')

    assert await client.execute(wf.square_workflow, 7) == 49
    failed = await client.trigger(wf.fail, wf.Job(tag=tag))
    await wait_for_status(client, failed.run_id, RunStatus.FAILED)
    with pytest.raises(NotFoundError):
        await client.get_run("no-such-run")

    status, text = await fetch("GET", f"{url}/metrics")
    assert status == 200
    seen = samples(text)
    assert seen[("stepd_runs_started_total", (("workflow", "e2e.square"),))] == 1
    ended = "stepd_runs_ended_total"
    assert seen[(ended, (("status", "completed"), ("workflow", "e2e.square")))] == 1
    assert seen[(ended, (("status", "failed"), ("workflow", "e2e.fail")))] == 1
    duration = "stepd_run_duration_seconds_count"
    assert seen[(duration, (("status", "completed"), ("workflow", "e2e.square")))] == 1
    assert seen[("stepd_queue_wait_seconds_count", (("workflow", "e2e.square"),))] == 1
    assert seen[("stepd_steps_recorded_total", (("outcome", "result"),))] >= 1
    assert seen[("stepd_step_duration_seconds_count", ())] >= 1
    assert seen[("stepd_rpcs_total", (("code", "NOT_FOUND"), ("method", "GetRun")))] == 1
    assert seen[("stepd_rpcs_total", (("code", "OK"), ("method", "Trigger")))] == 2
    assert seen[("stepd_workers_connected", ())] == 1
    assert seen[("stepd_worker_free_slots", ())] >= 1
    assert seen[("stepd_ready_runs", ())] == 0
    assert seen[("stepd_store_writes_total", ())] >= seen[("stepd_store_commits_total", ())] > 0
    assert seen[("stepd_store_batches_retried_total", ())] == 0


async def test_a_hook_executes_from_a_webhook_once(
    server: Server, worker: object, client: Client, marks: Path, tag: str
) -> None:
    url = server.http_url
    handle = await client.trigger(wf.approval, wf.Approval(tag=tag))
    token = await token_of(marks, tag)
    await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

    status, text = await fetch("POST", f"{url}/hooks/{token}", body=b"{not json")
    assert status == 400 and json.loads(text)["error"].startswith("payload.json is not valid JSON")
    assert (await fetch("POST", f"{url}/hooks/h1.bm8.bm8.bm8", body={}))[0] == 404
    answer = await fetch("POST", f"{url}/hooks/{token}", body={"approved": True, "by": "web"})
    assert answer == (200, json.dumps({"run_id": handle.run_id}))

    result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    assert result == {"decision": {"approved": True, "by": "web"}, "token": token}
    # A second execution is refused; a redelivery (it carries a delivery id) is harmless.
    again = await fetch("POST", f"{url}/hooks/{token}", body={"approved": False})
    assert again[0] == 409 and "already executed" in again[1]
    redelivered = await fetch(
        "POST", f"{url}/hooks/{token}", body={"approved": True}, headers={"Stepd-Delivery": "d1"}
    )
    assert redelivered == (200, '{"already_executed": true}')


def start_keyed_server(stack: Stack, database: str, tmp_path: Path) -> Server:
    secrets = tmp_path / "event-secrets"
    secrets.write_text(f"# order events\norder.* {EVENT_SECRET}\n")
    return stack.start_server(
        database, args=["--auth", "keys", "--event-secrets-file", str(secrets)]
    )


async def test_events_need_a_key_or_a_signature(
    stack: Stack, database: str, tmp_path: Path, tag: str
) -> None:
    admin = admin_key(database)
    made = stepd("keys", "create", "--role", "reader", "--name", "scraper", "--database", database)
    assert made.returncode == 0, made.stderr
    reader = made.stdout.strip()
    server = start_keyed_server(stack, database, tmp_path)
    stack.start_worker(server, args=["--api-key", admin])
    url = server.http_url
    body = json.dumps({"order": 11, "amount": 5}).encode()
    event = f"{url}/events/order.paid"

    async with Client(server.address, api_key=admin) as client:
        handle = await client.trigger(wf.order_paid, wf.Order(tag=tag, order=11))
        await wait_for_status(client, handle.run_id, RunStatus.SUSPENDED)

        assert (await fetch("POST", event, body=body))[0] == 401
        as_reader = {"Authorization": f"Bearer {reader}"}
        denied = await fetch("POST", event, body=body, headers=as_reader)
        assert denied[0] == 403 and "publish_event" in denied[1]
        forged = {"Stepd-Signature": sign(b"x" * 64, int(time.time()), body)}
        assert (await fetch("POST", event, body=body, headers=forged))[0] == 401
        stale = {"Stepd-Signature": sign(EVENT_SECRET.encode(), int(time.time()) - 3600, body)}
        assert (await fetch("POST", event, body=body, headers=stale))[0] == 401
        other = {"Stepd-Signature": sign(EVENT_SECRET.encode(), int(time.time()), body)}
        status, text = await fetch("POST", f"{url}/events/invoice.sent", body=body, headers=other)
        assert status == 401 and "no event secret" in text

        signed = {"Stepd-Signature": sign(EVENT_SECRET.encode(), int(time.time()), body)}
        status, text = await fetch("POST", event, body=body, headers=signed)
        assert status == 200 and json.loads(text)["woken_run_ids"] == [handle.run_id]
        replayed = json.loads((await fetch("POST", event, body=body, headers=signed))[1])
        assert replayed["already_published"] is True and replayed["woken_run_ids"] == []
        result = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
        assert result == {"order": 11, "paid": 5}

        # Metrics need a key with the read right; the probes need none.
        assert (await fetch("GET", f"{url}/metrics"))[0] == 401
        status, text = await fetch("GET", f"{url}/metrics", headers=as_reader)
        assert status == 200 and "stepd_runs_ended_total" in text
        assert (await fetch("GET", f"{url}/healthz"))[0] == 200


def test_http_follows_the_loopback_rule_and_can_be_turned_off(stack: Stack, tmp_path: Path) -> None:
    database = str(tmp_path / "exposed.db")
    exposed = stepd(
        "serve", "--address", "127.0.0.1:0", "--http-address", "0.0.0.0:0", "--database", database
    )
    assert exposed.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 without" in exposed.stderr
    bad = stepd("serve", "--http-address", "nowhere", "--database", database)
    assert bad.returncode == 2 and "--http-address='nowhere' must be host:port" in bad.stderr

    quiet = stack.start_server(database, args=["--http-address", "off"])
    quiet.process.stop()
    assert "stepd http on" not in quiet.process.log_text()


def curl_recipes() -> list[str]:
    """The ``sh`` blocks of docs/observability.md that call the HTTP listener with curl."""
    text = (ROOT / "docs" / "observability.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [block for block in blocks if "curl " in block and "50052" in block]


async def test_the_curl_recipes_in_the_docs_work(
    stack: Stack, database: str, tmp_path: Path, marks: Path, tag: str
) -> None:
    secrets = tmp_path / "event-secrets"
    secrets.write_text(f"order.* {EVENT_SECRET}\n")
    server = stack.start_server(database, args=["--event-secrets-file", str(secrets)])
    stack.start_worker(server)
    async with Client(server.address) as client:
        approval = await client.trigger(wf.approval, wf.Approval(tag=tag))
        token = await token_of(marks, tag)
        await wait_for_status(client, approval.run_id, RunStatus.SUSPENDED)
        recipes = curl_recipes()
        assert len(recipes) >= 5
        env = {
            "PATH": os.environ["PATH"],
            "TOKEN": token,
            "SECRET": EVENT_SECRET,
            "STEPD_API_KEY": "stepd_unused_on_an_open_server",
        }
        for recipe in recipes:
            script = recipe.replace("http://127.0.0.1:50052", server.http_url)
            done = await asyncio.to_thread(
                subprocess.run,
                ["bash", "-euo", "pipefail", "-c", script],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, (recipe, done.stderr)
            answer = json.loads(done.stdout.strip().splitlines()[-1])
            assert "error" not in answer, (recipe, answer)
        result = await asyncio.wait_for(approval.result(), RESULT_TIMEOUT)
        assert result["decision"] == {"approved": True}
