"""Migration 23: the concurrency and debounce indexes hold open runs only.

Migration 19's ``ix_runs_concurrency`` and migration 22's
``ix_runs_workflow_name_debounce_key`` held every run of a key, ended ones
too, so counting a key's active runs (every insert under a limit) and finding
a key's pending debounced run (every debounced trigger) read all the key's
past runs: a long-lived key made each insert slower. They are rebuilt as
partial indexes over unfinished runs (concurrency) and pending runs
(debounce), and the debounce index ends in ``seq`` (the newest pending run
without a sort). A query uses them only when it repeats the index's
condition word for word (``stepd.server.store.schema.UNFINISHED``,
``PENDING_ONLY``).

Frozen once released.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

DESCRIPTION = "concurrency and debounce indexes over open runs only"


def upgrade(conn: Connection) -> None:
    """Drop the two indexes and create them over open runs."""
    conn.execute(text("DROP INDEX ix_runs_concurrency"))
    conn.execute(
        text(
            "CREATE INDEX ix_runs_concurrency ON runs "
            "(concurrency_name, concurrency_key, admitted, seq) "
            "WHERE concurrency_name IS NOT NULL "
            "AND status IN ('pending', 'running', 'suspended')"
        )
    )
    conn.execute(text("DROP INDEX ix_runs_workflow_name_debounce_key"))
    conn.execute(
        text(
            "CREATE INDEX ix_runs_workflow_name_debounce_key ON runs "
            "(workflow_name, debounce_key, seq) "
            "WHERE debounce_key IS NOT NULL AND status = 'pending'"
        )
    )
