"""``stepd runs | schedules | events | hooks | workers | limits ...``: operate a server over gRPC.

Noun-verb commands with the connection settings of ``stepd health`` and
``stepd keys`` (``--address``, ``--api-key``, TLS; see
``stepd.server.security.channel``). They import only grpc, the generated
``stepd.v1`` code and those settings (never the store), so they start fast on
a machine with the base install. One module per noun lists its verbs
(``VERBS``); add a module to ``MODULES`` (and its noun to ``NOUNS``) for more.
"""

from __future__ import annotations

import argparse
from typing import Any

from stepd.server.ops_cli import (
    command,
    events,
    hooks,
    limits,
    run_actions,
    runs,
    schedules,
    workers,
)

#: Each noun and its help.
NOUNS = {
    "runs": "list, inspect, follow, start, signal, cancel, retry, fork and delete runs",
    "schedules": "list, inspect, create, pause, resume, delete and trigger schedules",
    "events": "publish events",
    "hooks": "execute hooks",
    "workers": "list connected workers",
    "limits": "list flow-control limits and their queues",
}
#: The modules whose VERBS make the commands.
MODULES = (runs, run_actions, schedules, events, hooks, workers, limits)


def add_parsers(commands: Any, default_address: str) -> None:
    """Add every noun and its verbs to the ``stepd`` parser."""
    verbs = [verb for module in MODULES for verb in module.VERBS]
    command.add_nouns(commands, NOUNS, verbs, default_address)


def run(args: argparse.Namespace, default_address: str) -> int:
    """Run the chosen command; the exit code."""
    return command.run(args, default_address)
