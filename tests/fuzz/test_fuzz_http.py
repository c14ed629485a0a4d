"""Property-based fuzzing of the HTTP listener of a real ``stepd serve`` on each
backend: every route (the UI's RPC gateway, webhooks, probes, metrics, the
UI's files and session) with generated and malformed methods, paths, headers
and bodies gets a documented client status (never a 5xx), a short answer,
and the server stays ready; ordinary runs complete afterwards.

Bounded by wall-clock time (half of ``STEPD_FUZZ_SECONDS``: about 15 s per backend).
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import strategies as st

from stepd.v1 import admin_service_pb2, workflow_service_pb2
from tests.e2e.harness import Server, Stack
from tests.fuzz.strategies import messages
from tests.fuzz.test_fuzz_api import (
    SECONDS,
    Budget,
    assert_serving,
    bounded_wait,
    ordinary_runs_complete,
    within,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]

SERVICES = [
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
#: What a caller may get for its own requests.
CLIENT_STATUSES = {200, 400, 401, 403, 404, 405, 409, 413, 429, 501}
TEXTS = st.one_of(
    st.sampled_from(["", "x", "..", "%2e%2e", "a/b", "\x00", "é", "x" * 300, "%00", "%ff"]),
    st.text(max_size=40),
)
JSON_BODIES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(levels: int) -> bytes:
    return ("[" * levels + "]" * levels).encode()


BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_BODIES.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(
        [b"", b"{}", b"null", b'{"json": NaN}', deep(2000), b"\xff\xfe", b"x" * 70_000]
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    kind = draw(st.integers(0, 5))
    headers: dict[str, str] = {}
    method = draw(st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    if kind == 0:  # the gateway with a generated request message
        service, rpc = draw(st.sampled_from(METHODS))
        message = draw(messages(rpc.input_type))
        bounded_wait(message)  # GetRun(wait=true) may hold the call for a minute by design
        try:
            body = json_format.MessageToJson(message).encode()
        except (json_format.SerializeToJsonError, ValueError):  # a time out of range
            body = b'{"start_time": "10000-01-01T00:00:00Z", "wait_timeout": "-1s"}'
        path = f"/api/{service.full_name}/{rpc.name}"
    elif kind == 1:
        path = f"/api/{quote(draw(TEXTS), safe='')}/{quote(draw(TEXTS), safe='')}"
        body = draw(BODIES)
    elif kind == 2:
        path = f"/hooks/{quote(draw(TEXTS), safe='')}"
        body = draw(BODIES)
    elif kind == 3:
        path = f"/events/{quote(draw(TEXTS), safe='')}"
        body = draw(BODIES)
        headers["Stepd-Signature"] = draw(st.sampled_from(["", "t=1,v1=00", "garbage", "t=x"]))
    elif kind == 4:
        path = draw(
            st.sampled_from(["/", "/metrics", "/healthz", "/readyz", "/api/me", "/ui/session"])
        )
        path += draw(st.sampled_from(["", "?x=1", "/", "/../ui/app.js"]))
        body = draw(BODIES)
    else:
        path = "/ui/" + quote(draw(TEXTS), safe="/.")
        body = b""
    for name, value in draw(
        st.dictionaries(
            st.sampled_from(
                ["Authorization", "Cookie", "Stepd-UI", "Content-Type", "Stepd-Delivery"]
            ),
            st.sampled_from(["", "Bearer x", "Bearer stepd_a_b", "stepd_session=abc", "1", "é"]),
            max_size=3,
        )
    ).items():
        headers[name] = value
    return method, path, headers, body


def send(
    base: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    where = urlsplit(base)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=30)
    try:
        safe_headers = {
            k: v.encode("latin-1", "replace").decode("latin-1") for k, v in headers.items()
        }
        connection.request(method, path, body=body or None, headers=safe_headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.fixture
def fuzz_server(stack: Stack, database: str) -> Server:
    return stack.start_server(database)


def test_fuzzed_http_requests_get_client_statuses_and_the_server_keeps_serving(
    stack: Stack, fuzz_server: Server
) -> None:
    base = fuzz_server.http_url
    budget = Budget()

    def prop(data: Any) -> None:
        method, path, headers, body = data.draw(requests())
        budget.examples += 1
        status, answer = send(base, method, path, headers, body)
        try:
            assert status in CLIENT_STATUSES, f"{method} {path[:80]}: {status} {answer[:200]!r}"
            if status >= 400 and path.startswith(("/api/", "/hooks/", "/events/")):
                assert len(answer) < 2000, f"{method} {path[:80]}: a long answer"
        except AssertionError as error:
            budget.failed(error, (method, path, headers, body[:200]))

    within(SECONDS * 0.5, 3000, prop)
    budget.check()
    assert budget.examples > 20
    assert send(base, "GET", "/readyz", {}, b"")[0] == 200
    with grpc.insecure_channel(fuzz_server.address) as channel:
        assert_serving(fuzz_server, channel)
        ordinary_runs_complete(stack, fuzz_server, channel)
    assert "Traceback" not in fuzz_server.process.log_text()
