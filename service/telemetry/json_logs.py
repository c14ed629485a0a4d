"""``--log-format json``: one JSON object per log line.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and
``message``; and where known ``run_id``, ``workflow``, ``lease`` (from the
log call's ``extra=``), ``rpc`` and ``key_id`` (the call being handled:
``rpc_context.current_rpc`` and the API key's id, never the key). An
exception's traceback is the ``traceback`` field, so a line never breaks.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from stepd.server.security.principal import current_key_id
from stepd.server.telemetry.rpc_context import current_rpc

#: The fields a log call may give with ``extra=``.
RUN_FIELDS = ("run_id", "workflow", "lease")

#: What ``configure`` was last given: (level, format).
_configured = ("INFO", "text")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in RUN_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                line[name] = value
        rpc, key_id = current_rpc(), current_key_id()
        if rpc:
            line["rpc"] = rpc
        if key_id:
            line["key_id"] = key_id
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level``, as text or JSON lines."""
    global _configured
    _configured = (level, log_format)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


def settings() -> tuple[str, str]:
    """The level and format ``configure`` set (for a helper process to log alike)."""
    return _configured
