"""Workflow versions operators manage: pins of the current version, retirement.

A workflow's *current* version takes the runs started without a version. The
engine decides it (``stepd.server.engine.registry``): the pinned version when
an operator pinned one, else the newest version a connected worker serves.
Runs the store starts by itself (schedules, event triggers) take the pinned
version, or none: the first worker to claim such a run pins it to the newest
version it serves (``claim_run``).
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, select, update

from stepd.server.domain_keys import PinStatus, RetireStatus
from stepd.server.store.dialects import insert_for
from stepd.server.store.executor import Committer, Reader
from stepd.server.store.schema import workflow_pins, workflow_versions


def pinned(conn: Connection, name: str) -> str:
    """The version pinned as ``name``'s current one, or ""."""
    version = conn.execute(
        select(workflow_pins.c.version).where(workflow_pins.c.workflow_name == name)
    ).scalar()
    return version or ""


def newest_in_use(conn: Connection, name: str) -> str:
    """The most recently registered version of ``name`` that is not retired, or ""."""
    t = workflow_versions
    version = conn.execute(
        select(t.c.version)
        .where(t.c.name == name, t.c.retire_time.is_(None))
        .order_by(t.c.first_seen.desc(), t.c.version.desc())
        .limit(1)
    ).scalar()
    return version or ""


def _retire_time(conn: Connection, name: str, version: str) -> tuple[bool, int | None]:
    row = conn.execute(
        select(workflow_versions.c.retire_time).where(
            workflow_versions.c.name == name, workflow_versions.c.version == version
        )
    ).first()
    return (False, None) if row is None else (True, row.retire_time)


def pin(conn: Connection, name: str, version: str, now: int) -> PinStatus:
    """Pin ``name``'s current version to a registered version that is not retired."""
    known, retired = _retire_time(conn, name, version)
    if not known:
        return PinStatus.UNKNOWN_VERSION
    if retired is not None:
        return PinStatus.RETIRED
    insert = insert_for(conn.dialect.name)
    conn.execute(
        insert(workflow_pins)
        .values(workflow_name=name, version=version, pin_time=now)
        .on_conflict_do_update(
            index_elements=["workflow_name"], set_={"version": version, "pin_time": now}
        )
    )
    return PinStatus.PINNED


def unpin(conn: Connection, name: str) -> bool:
    """Remove ``name``'s pin; False when it had none."""
    return bool(
        conn.execute(delete(workflow_pins).where(workflow_pins.c.workflow_name == name)).rowcount
    )


def retire(conn: Connection, name: str, version: str, now: int) -> RetireStatus:
    """Retire a version; refused while it is the pinned one."""
    known, retired = _retire_time(conn, name, version)
    if not known:
        return RetireStatus.UNKNOWN_VERSION
    if retired is not None:
        return RetireStatus.ALREADY_RETIRED
    if pinned(conn, name) == version:
        return RetireStatus.PINNED
    conn.execute(
        update(workflow_versions)
        .where(workflow_versions.c.name == name, workflow_versions.c.version == version)
        .values(retire_time=now)
    )
    return RetireStatus.RETIRED


def read_pins(conn: Connection) -> dict[str, str]:
    """Every pin: workflow name -> version."""
    return {
        row.workflow_name: row.version
        for row in conn.execute(select(workflow_pins.c.workflow_name, workflow_pins.c.version))
    }


class VersionStoreMixin:
    """The ``Store`` methods for pinning and retiring versions, for ``SqlStore``."""

    _committer: Committer
    _reads: Reader

    async def pin_workflow_version(self, name: str, version: str, now: int) -> PinStatus:
        """Pin a workflow's current version."""
        return await self._committer.submit(lambda conn: pin(conn, name, version, now))

    async def unpin_workflow_version(self, name: str) -> bool:
        """Remove a workflow's pin; False when it had none."""
        return await self._committer.submit(lambda conn: unpin(conn, name))

    async def retire_workflow_version(self, name: str, version: str, now: int) -> RetireStatus:
        """Retire a workflow version."""
        return await self._committer.submit(lambda conn: retire(conn, name, version, now))

    async def workflow_pins(self) -> dict[str, str]:
        """Every pin: workflow name -> version."""
        return await self._reads.run(read_pins)
