"""A server with TLS (and mutual TLS), API keys and a hook secret, with a real
worker process and the SDK; and what ``stepd serve`` refuses off loopback."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stepd import Client, Worker
from stepd.errors import (
    PermissionDeniedError,
    ServerUnavailableError,
    UnauthenticatedError,
)
from stepd.history import RunEventType
from tests.certs import Certificates, make_certificates
from tests.e2e.harness import ROOT, Server, Stack, console_script
from tests.e2e.workflows import square_workflow

HOOK_SECRET = "f" * 64
RESULT_TIMEOUT = 60


def stepd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``stepd`` command (keys, health) and return what it did."""
    import os

    return subprocess.run(
        [*console_script("stepd", "stepd.server.cli"), *args],
        cwd=ROOT,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin_key(database: str) -> str:
    """The first admin key, made on the database before the server starts."""
    done = stepd("keys", "create", "--role", "admin", "--name", "ops", "--database", database)
    assert done.returncode == 0, done.stderr
    assert "only time it is shown" in done.stderr
    return done.stdout.strip()


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


def start_secure_server(
    stack: Stack, database: str, certs: Certificates, tmp_path: Path, *, mutual: bool = False
) -> Server:
    secret = tmp_path / "hook-secret"
    secret.write_text(HOOK_SECRET + "\n")
    args = ["--auth", "keys", "--tls-cert", str(certs.server.cert), "--tls-key"]
    args += [str(certs.server.key), "--hook-secret-file", str(secret)]
    if mutual:
        args += ["--tls-client-ca", str(certs.ca)]
    return stack.start_server(database, args=args)


def tls_args(certs: Certificates, *, mutual: bool) -> list[str]:
    args = ["--tls-ca", str(certs.ca)]
    if mutual:
        args += ["--tls-client-cert", str(certs.client.cert), "--tls-client-key"]
        args += [str(certs.client.key)]
    return args


def create_key(
    server: Server, certs: Certificates, admin: str, role: str, *more: str, mutual: bool = False
) -> str:
    """A key made through the running server with the admin key (stepd keys)."""
    done = stepd(
        "keys",
        "create",
        "--role",
        role,
        "--name",
        f"{role}-e2e",
        *more,
        "--address",
        server.address,
        *tls_args(certs, mutual=mutual),
        env={"STEPD_API_KEY": admin},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_runs_flow_over_tls_with_keys_and_strangers_are_refused(
    stack: Stack, database: str, certs: Certificates, tmp_path: Path, mutual: bool
) -> None:
    admin = admin_key(database)
    server = start_secure_server(stack, database, certs, tmp_path, mutual=mutual)
    worker_key = create_key(server, certs, admin, "worker", "--workflow", "e2e.*", mutual=mutual)
    client_key = create_key(server, certs, admin, "client", mutual=mutual)
    operator_key = create_key(server, certs, admin, "operator", mutual=mutual)
    stack.start_worker(server, args=[*tls_args(certs, mutual=mutual), "--api-key", worker_key])
    client_cert: dict[str, Any] = (
        {"cert_file": certs.client.cert, "key_file": certs.client.key} if mutual else {}
    )

    async with Client(
        server.address, api_key=client_key, ca_file=certs.ca, **client_cert
    ) as client:
        assert await asyncio.wait_for(client.execute(square_workflow, 9), RESULT_TIMEOUT) == 81
        waiting = await client.trigger("ops.unserved")
        await client.signal(waiting.run_id, "go", "now")
        with pytest.raises(PermissionDeniedError, match="'cancel'"):
            await client.cancel(waiting.run_id)
    async with Client(
        server.address, api_key=operator_key, ca_file=certs.ca, **client_cert
    ) as operator:
        events = [e async for e in operator.list_run_events(waiting.run_id)]
        signalled = [e for e in events if e.type is RunEventType.SIGNAL_RECEIVED]
        assert signalled and signalled[0].actor_key_id == client_key.split("_")[1]

    # Without the key, with a plaintext channel, or without trusting the CA: refused.
    async with Client(server.address, ca_file=certs.ca, **client_cert) as anonymous:
        with pytest.raises(UnauthenticatedError, match="needs an API key"):
            await anonymous.get_run(waiting.run_id)
    async with Client(server.address, api_key=client_key) as plaintext:
        with pytest.raises(ServerUnavailableError):
            await plaintext.get_run(waiting.run_id)
    async with Client(server.address, api_key=client_key, tls=True, **client_cert) as untrusting:
        with pytest.raises(ServerUnavailableError):
            await untrusting.get_run(waiting.run_id)
    if mutual:  # without a client certificate, or with one from another CA
        async with Client(server.address, api_key=client_key, ca_file=certs.ca) as no_cert:
            with pytest.raises(ServerUnavailableError):
                await no_cert.get_run(waiting.run_id)
        async with Client(
            server.address,
            api_key=client_key,
            ca_file=certs.ca,
            cert_file=certs.stranger.cert,
            key_file=certs.stranger.key,
        ) as stranger:
            with pytest.raises(ServerUnavailableError):
                await stranger.get_run(waiting.run_id)

    health = stepd("health", "--address", server.address, *tls_args(certs, mutual=mutual))
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    assert stepd("health", "--address", server.address).returncode == 1


async def test_a_worker_whose_key_does_not_name_its_workflows_is_refused(
    stack: Stack, database: str, certs: Certificates, tmp_path: Path
) -> None:
    admin = admin_key(database)
    server = start_secure_server(stack, database, certs, tmp_path)
    billing_key = create_key(server, certs, admin, "worker", "--workflow", "billing")
    worker = stack.start_worker(
        server, args=[*tls_args(certs, mutual=False), "--api-key", billing_key], wait=False
    )
    assert await asyncio.to_thread(worker.popen.wait, 30) == 1
    log = worker.log_text()
    assert "PERMISSION_DENIED" in log and "may not serve e2e." in log
    assert billing_key not in log

    async with Client(
        server.address, api_key=billing_key, ca_file=certs.ca
    ) as as_worker:  # the SDK's Worker refuses the same way
        serving = Worker(as_worker, [square_workflow])
        with pytest.raises(PermissionDeniedError, match=r"may not serve e2e\.square"):
            await asyncio.wait_for(serving.run(), 30)


async def test_keys_made_listed_and_revoked_with_stepd_keys(
    stack: Stack, database: str, certs: Certificates, tmp_path: Path
) -> None:
    admin = admin_key(database)
    server = start_secure_server(stack, database, certs, tmp_path)
    reader = create_key(server, certs, admin, "reader", "--expires", "1d")
    reader_id = reader.split("_")[1]
    connect = ["--address", server.address, *tls_args(certs, mutual=False)]
    listed = stepd("keys", "list", *connect, env={"STEPD_API_KEY": admin})
    assert listed.returncode == 0, listed.stderr
    assert reader_id in listed.stdout and "reader" in listed.stdout
    assert reader not in listed.stdout
    denied = stepd("keys", "list", *connect, env={"STEPD_API_KEY": reader})
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr

    async with Client(server.address, api_key=reader, ca_file=certs.ca) as client:
        assert [r async for r in client.list_runs()] == []
        revoked = stepd("keys", "revoke", reader_id, *connect, env={"STEPD_API_KEY": admin})
        assert revoked.returncode == 0 and f"revoked API key {reader_id}" in revoked.stdout
        with pytest.raises(UnauthenticatedError, match="revoked"):
            await client.get_run("any")
    shown = stepd("keys", "list", "--all", "--json", *connect, env={"STEPD_API_KEY": admin})
    assert '"revoke_time": "20' in shown.stdout


def test_serve_refuses_a_public_address_without_protection_and_says_why(
    tmp_path: Path, certs: Certificates
) -> None:
    database = str(tmp_path / "public.db")
    done = stepd("serve", "--address", "0.0.0.0:0", "--database", database)
    assert done.returncode == 1
    assert done.stderr.startswith("stepd: refusing to listen on 0.0.0.0:0 without TLS")
    assert "a hook secret" in done.stderr and "--insecure" in done.stderr
    assert not Path(database).exists()  # nothing was touched
    open_ = stepd("serve", "--address", "[::]:0", "--database", database, "--auth", "none")
    assert open_.returncode == 1 and "API keys" in open_.stderr


def test_serve_on_a_public_address_starts_when_protected_or_told_insecure(
    stack: Stack, tmp_path: Path, certs: Certificates
) -> None:
    secret = tmp_path / "hook-secret"
    secret.write_text(HOOK_SECRET)
    protected = stack.start_server(
        tmp_path / "protected.db",
        address="0.0.0.0:0",
        args=["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)],
        env={"STEPD_HOOK_SECRET_FILE": str(secret)},
    )
    log = protected.process.log_text()
    assert "TLS on; API keys required" in log and "(--insecure)" not in log
    insecure = stack.start_server(
        tmp_path / "insecure.db", address="0.0.0.0:0", args=["--insecure"]
    )
    log = insecure.process.log_text()
    assert "WARNING" in log and "without TLS" in log and "(--insecure)" in log
    short = stepd(
        "serve", "--database", str(tmp_path / "x.db"), env={"STEPD_HOOK_SECRET": "too short"}
    )
    assert short.returncode == 1 and "shorter than 32 characters" in short.stderr
