"""``stepd-worker --log-format json``: one JSON object per log line.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and
``message``; and where known ``run_id``, ``workflow`` and ``lease`` (from the
log call's ``extra=``, see ``run_fields``, or else from the run whose code logs:
``running`` marks a run's task, and the tasks of its steps inherit it, so a
step's own log lines carry the run too). An exception's traceback is the
``traceback`` field, so a line never breaks.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

#: The fields a log call may give with ``extra=``.
RUN_FIELDS = ("run_id", "workflow", "lease")


def run_fields(run_id: str, workflow: str = "", lease: int = 0) -> dict[str, object]:
    """The ``extra=`` of a log call about a run."""
    fields: dict[str, object] = {"run_id": run_id}
    if workflow:
        fields["workflow"] = workflow
    if lease:
        fields["lease"] = lease
    return fields


_RUN: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "stepd_log_run", default=None
)


def running(fields: dict[str, object]) -> contextvars.Token[dict[str, object] | None]:
    """Mark the current task (and the tasks it starts) as running the run of
    ``fields`` (``run_fields``); undo with ``_RUN.reset`` via ``done``."""
    return _RUN.set(fields)


def done(token: contextvars.Token[dict[str, object] | None]) -> None:
    """Undo ``running``."""
    _RUN.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run = _RUN.get() or {}
        for name in RUN_FIELDS:
            value = getattr(record, name, None)
            if value in (None, ""):
                value = run.get(name)
            if value not in (None, ""):
                line[name] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
