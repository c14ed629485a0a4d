"""The grpcurl recipes of docs/security.md, run as written against a server with
TLS and keys, and again with mutual TLS."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.certs import make_certificates
from tests.e2e.harness import ROOT, Stack
from tests.e2e.test_grpcurl import grpcurl_binary
from tests.e2e.test_security import HOOK_SECRET, admin_key

DOC = ROOT / "docs" / "security.md"


def recipes() -> list[str]:
    """The grpcurl commands of the doc's "grpcurl with TLS and a key" section."""
    text = DOC.read_text()
    start = text.index("## grpcurl with TLS and a key")
    block = re.search(r"```sh\n(.*?)```", text[start:], flags=re.DOTALL)
    assert block is not None
    lines = block[1].replace("\\\n", " ").splitlines()
    commands = [line for line in lines if line.startswith("grpcurl ")]
    assert len(commands) >= 5
    return commands


@pytest.mark.sqlite_only
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_the_grpcurl_recipes_of_security_md(
    stack: Stack, tmp_path: Path, database: str, mutual: bool
) -> None:
    certs = make_certificates(tmp_path / "certs")
    key = admin_key(database)
    args = ["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)]
    args += ["--auth", "keys"] + (["--tls-client-ca", str(certs.ca)] if mutual else [])
    server = stack.start_server(database, args=args, env={"STEPD_HOOK_SECRET": HOOK_SECRET})
    env = os.environ | {"STEPD_API_KEY": key, "ADDR": server.address}
    env["PATH"] = f"{Path(grpcurl_binary()).parent}:{env['PATH']}"
    outputs = []
    for command in recipes():
        if mutual:  # as the doc says: add the client certificate
            command = command.replace(
                "-cacert ca.pem", "-cacert ca.pem -cert client.pem -key client.key"
            )
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=certs.ca.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        outputs.append(done.stdout)
    assert "stepd.v1.AdminService" in outputs[0]
    assert json.loads(outputs[1])["run"]["workflow_name"] == "ops.unserved"
    assert json.loads(outputs[3])["secret"].startswith("stepd_")
    assert json.loads(outputs[-1]) == {"status": "SERVING"}
    assert key not in server.process.log_text()
    # Without the key, or without the CA: refused.
    bare = [grpcurl_binary(), "-cacert", "ca.pem", server.address, "list"]
    if mutual:
        bare[1:1] = ["-cert", "client.pem", "-key", "client.key"]
    denied = subprocess.run(bare, cwd=certs.ca.parent, capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
    untrusted = subprocess.run(
        [grpcurl_binary(), "-H", f"authorization: Bearer {key}", server.address, "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert untrusted.returncode != 0
