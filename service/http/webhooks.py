"""Webhooks: ``POST /hooks/{token}`` executes a hook, ``POST /events/{name}``
publishes an event; the body is the JSON payload.

* A hook's URL is its own credential: the token is an unguessable MAC minted
  for one wait of one run (``engine/hook_tokens.py``), so a provider needs
  nothing else. A request that does send an API key must send a usable one
  with the ``execute_hook`` right.
* An event needs an API key with the ``publish_event`` right, or a
  ``Stepd-Signature`` made with a secret configured for the event's name
  (``event_signatures.py``). A server open on loopback needs neither.
* A delivery id (``Stepd-Delivery`` or ``Idempotency-Key``) makes a redelivery
  harmless: it is the event's id (the same id publishes once), and a hook
  executed before answers 200 with ``already_executed`` instead of 409. A signed
  event without one takes its id from the signature, so a replayed signed
  request publishes nothing new either.
"""

from __future__ import annotations

import hashlib
import logging
import time

from aiohttp import web

from stepd.server.engine.engine import Engine
from stepd.server.engine.errors import EngineError, HookAlreadyExecuted, InvalidArgument
from stepd.server.engine.validation import check_name
from stepd.server.http import event_signatures
from stepd.server.http.access import Access, bearer_key
from stepd.server.http.event_signatures import SIGNATURE_HEADER, EventSecret
from stepd.server.http.responses import engine_error_answer, error_answer, json_answer
from stepd.server.security.roles import Right

log = logging.getLogger("stepd.http")

DELIVERY_HEADERS = ("Stepd-Delivery", "Idempotency-Key")


class Webhooks:
    """The webhook routes of one server."""

    def __init__(self, engine: Engine, access: Access, secrets: tuple[EventSecret, ...]) -> None:
        self._engine = engine
        self._access = access
        self._secrets = secrets

    def add_routes(self, app: web.Application) -> None:
        """Register ``POST /hooks/{token}`` and ``POST /events/{name}``."""
        app.router.add_post("/hooks/{token}", self.execute_hook)
        app.router.add_post("/events/{name}", self.publish_event)

    async def execute_hook(self, request: web.Request) -> web.Response:
        """Execute the hook the URL's token names with the body as its payload."""
        actor = ""
        if bearer_key(request) is not None:
            principal = await self._access.principal(request, Right.EXECUTE_HOOK)
            actor = principal.key_id if principal is not None else ""
        delivery = _delivery_id(request)
        try:
            body = await _json_body(request)
            run_id = await self._engine.execute_hook(
                request.match_info["token"], body, "", actor=actor
            )
        except HookAlreadyExecuted as exc:
            if delivery:
                return json_answer({"already_executed": True})
            return _client_error(request, exc)
        except EngineError as exc:
            return _client_error(request, exc)
        return json_answer({"run_id": run_id})

    async def publish_event(self, request: web.Request) -> web.Response:
        """Publish the event the URL names with the body as its payload."""
        name = request.match_info["name"]
        raw = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER)
        actor = ""
        event_id = _delivery_id(request)
        if bearer_key(request) is not None or signature is None:
            principal = await self._access.principal(request, Right.PUBLISH_EVENT)
            actor = principal.key_id if principal is not None else ""
        else:
            problem = event_signatures.verify(self._secrets, name, signature, raw, time.time())
            if problem is not None:
                log.debug("POST /events: signature refused: %s", problem)
                return error_answer(401, problem)
            actor = "signed"
            event_id = event_id or "sig-" + hashlib.sha256(signature.encode()).hexdigest()[:32]
        try:
            check_name("name", name, required=True)
            check_name("event id", event_id)
            event_id, already, woken, started = await self._engine.publish_event(
                name, _text(raw), "", event_id, actor=actor
            )
        except EngineError as exc:
            return _client_error(request, exc)
        return json_answer(
            {
                "event_id": event_id,
                "already_published": already,
                "woken_run_ids": woken,
                "started_run_ids": started,
            }
        )


def _delivery_id(request: web.Request) -> str:
    for header in DELIVERY_HEADERS:
        value = request.headers.get(header)
        if value:
            return value.strip()
    return ""


async def _json_body(request: web.Request) -> str:
    return _text(await request.read())


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("the body is not UTF-8 JSON") from None


def _client_error(request: web.Request, exc: EngineError) -> web.Response:
    answer = engine_error_answer(exc)
    log.debug("%s %s: %d: %s", request.method, request.path[:60], answer.status, exc)
    return answer
