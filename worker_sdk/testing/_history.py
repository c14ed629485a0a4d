"""``RunHistory``: a run and its history, as a server exports it, and its JSON file.

A history file (``RunHistory.save`` / ``RunHistory.load``, documented in
docs/testing.md) is one JSON object::

    {
      "format": "stepd-history/1",
      "run": {"run_id": ..., "workflow_name": ..., "workflow_version": ...,
              "status": "completed", "input": ..., "result": ...,
              "error": {"type": ..., "message": ...} or null,
              "failure_reason": "workflow_error" or null},
      "events": [{"sequence": 3, "type": "step_completed",
                  "time": "2026-01-05T09:30:00.125000+00:00", "key": "charge",
                  "payload": ..., "attempt": 1}, ...]
    }

An event holds the fields of ``stepd.history.RunEvent`` that are set (``name``,
``key``, ``payload``, ``error`` as ``{"type", "message", "traceback"}``,
``attempt``, ``detail``, ``attempt_only``); the others are left out. An
event type this SDK does not know reads as ``unknown``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from stepd._client import Client
from stepd._runs import RunStatus
from stepd.history import RunEvent, RunEventType

FORMAT = "stepd-history/1"
"""The ``format`` of the history files this SDK writes and reads."""


@dataclass(frozen=True, slots=True)
class RunHistory:
    """A run and its history: what ``replay`` checks code against.

    Get one from a server with ``await RunHistory.fetch(client, run_id)`` (or
    ``env.history(run)`` in a test environment), keep it as a JSON file with
    ``save(path)``, and read it back with ``RunHistory.load(path)``. ``input``
    and ``result`` are plain JSON values; ``events`` are the run's history,
    oldest first (``Client.list_run_events``).
    """

    run_id: str
    workflow_name: str
    workflow_version: str
    status: RunStatus
    """Where the run stood when the history was exported."""
    input: Any
    events: tuple[RunEvent, ...] = field(default=())
    result: Any = None
    error_type: str | None = None
    error_message: str | None = None
    failure_reason: str | None = None
    """Why a failed run failed: ``workflow_error`` (its code raised), or a reason of
    the server's (``deadline_exceeded``, ``execution_timeout``, ...)."""

    @classmethod
    async def fetch(cls, client: Client, run_id: str) -> RunHistory:
        """Export a run's history from a server (``ListRunEvents``, then ``GetRun``)."""
        events = [event async for event in client.list_run_events(run_id, page_size=1000)]
        run = await client.get_run(run_id)  # read after the events: it is no older
        return cls(
            run_id=run.run_id,
            workflow_name=run.workflow_name,
            workflow_version=run.workflow_version,
            status=run.status,
            input=run.input,
            events=tuple(events),
            result=run.result,
            error_type=run.error_type,
            error_message=run.error_message,
            failure_reason=run.failure_reason,
        )

    @property
    def ended_by_its_code(self) -> bool:
        """True when the run completed, or failed because its code raised."""
        if self.status is RunStatus.COMPLETED:
            return True
        return self.status is RunStatus.FAILED and self.failure_reason == "workflow_error"

    # -- the JSON file ------------------------------------------------------------------

    def to_json(self) -> str:
        """The history as a JSON document (the file format in the module docstring)."""
        error = None
        if self.error_type is not None or self.error_message is not None:
            error = {"type": self.error_type or "", "message": self.error_message or ""}
        document = {
            "format": FORMAT,
            "run": {
                "run_id": self.run_id,
                "workflow_name": self.workflow_name,
                "workflow_version": self.workflow_version,
                "status": self.status.value,
                "input": self.input,
                "result": self.result,
                "error": error,
                "failure_reason": self.failure_reason,
            },
            "events": [_event_json(event) for event in self.events],
        }
        return json.dumps(document, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunHistory:
        """Read a history from its JSON document; ValueError names what is wrong."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a history file must be JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            found = document.get("format") if isinstance(document, dict) else None
            raise ValueError(f"not a stepd history file: format is {found!r}, not {FORMAT!r}")
        run = _object(document.get("run"), "run")
        events = document.get("events", [])
        if not isinstance(events, list):
            raise ValueError("events must be a list")
        error = run.get("error")
        error = _object(error, "run.error") if error is not None else {}
        try:
            status = RunStatus(str(run.get("status")))
        except ValueError:
            raise ValueError(f"run.status is not a run status: {run.get('status')!r}") from None
        return cls(
            run_id=_text(run, "run_id"),
            workflow_name=_text(run, "workflow_name"),
            workflow_version=_text(run, "workflow_version"),
            status=status,
            input=run.get("input"),
            events=tuple(_event(_object(e, f"events[{i}]"), i) for i, e in enumerate(events)),
            result=run.get("result"),
            error_type=error.get("type"),
            error_message=error.get("message"),
            failure_reason=run.get("failure_reason"),
        )

    def save(self, path: str | Path) -> None:
        """Write the history to a JSON file."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RunHistory:
        """Read a history from a JSON file."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _event_json(event: RunEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"sequence": event.sequence, "type": event.type.value}
    if event.time is not None:
        out["time"] = event.time.isoformat()
    for name in ("key", "name", "detail"):
        value = getattr(event, name)
        if value is not None:
            out[name] = value
    if event.payload is not None:
        out["payload"] = event.payload
    if event.error_type is not None or event.error_message is not None:
        out["error"] = {
            "type": event.error_type or "",
            "message": event.error_message or "",
            "traceback": event.error_traceback or "",
        }
    if event.attempt:
        out["attempt"] = event.attempt
    if event.attempt_only:
        out["attempt_only"] = True
    return out


def _event(data: dict[str, Any], index: int) -> RunEvent:
    where = f"events[{index}]"
    try:
        kind = RunEventType(str(data.get("type")))
    except ValueError:
        kind = RunEventType.UNKNOWN
    time = data.get("time")
    try:
        when = datetime.fromisoformat(time) if isinstance(time, str) else None
    except ValueError:
        raise ValueError(f"{where}.time is not an ISO 8601 time: {time!r}") from None
    error = data.get("error")
    error = _object(error, f"{where}.error") if error is not None else {}
    sequence = data.get("sequence", index + 1)
    attempt = data.get("attempt", 0)
    if not _is_int(sequence) or not _is_int(attempt):
        raise ValueError(f"{where}: sequence and attempt must be whole numbers")
    return RunEvent(
        sequence=sequence,
        type=kind,
        time=when,
        key=_optional_text(data, "key", where),
        name=_optional_text(data, "name", where),
        payload=data.get("payload"),
        error_type=error.get("type") or None,
        error_message=error.get("message") or None,
        error_traceback=error.get("traceback") or None,
        attempt=attempt,
        detail=_optional_text(data, "detail", where),
        attempt_only=data.get("attempt_only") is True,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object")
    return value


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"run.{name} must be a non-empty string")
    return value


def _optional_text(data: dict[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}.{name} must be a string")
    return value
