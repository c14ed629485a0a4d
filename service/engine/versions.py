"""Operators' view of workflow versions: list them, pin the current one, retire one.

The registry (``registry.py``) decides a workflow's current version; this
module changes what it decides from (pins and retirements, stored first, then
applied to the registry at once), and keeps the registry in step with the
store every few seconds, so a pin or retirement made through another replica
counts here within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from stepd.server.domain import WorkflowVersion, now_ms
from stepd.server.domain_keys import PinStatus, RetireStatus
from stepd.server.engine.errors import FailedPrecondition, InvalidArgument, NotFound
from stepd.server.engine.registry import WorkflowRegistry
from stepd.server.engine.validation import MAX_ID_LENGTH
from stepd.server.store.base import Store
from stepd.server.store.errors import StoreUnavailableError

log = logging.getLogger("stepd.engine")

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class VersionView:
    """One registered version as operators see it."""

    name: str
    version: str
    first_seen: int
    retire_time: int | None
    current: bool
    pinned: bool
    connected_workers: int


class VersionAdmin:
    """Lists, pins, unpins and retires workflow versions."""

    def __init__(self, store: Store, registry: WorkflowRegistry, refresh_seconds: float) -> None:
        self._store = store
        self._registry = registry
        self._refresh_seconds = refresh_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the pins and retirements, then keep them in step with the store."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop following the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Apply the stored versions (retirements) and pins to the registry."""
        versions = await self._store.workflow_versions()
        pins = await self._store.workflow_pins()
        self._registry.merge(versions)
        self._registry.set_pins(pins)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except StoreUnavailableError as exc:
                log.warning("reading workflow pins: storage unavailable (%s)", exc)
            except Exception:
                log.exception("reading workflow pins failed; keeping the ones read before")

    def view(self, version: WorkflowVersion) -> VersionView:
        """How one version stands now."""
        registry = self._registry
        return VersionView(
            name=version.name,
            version=version.version,
            first_seen=version.first_seen,
            retire_time=registry.retire_time(version.name, version.version),
            current=registry.current(version.name) == version.version,
            pinned=registry.pinned(version.name) == version.version,
            connected_workers=registry.served_by(version.name, version.version),
        )

    def list_page(
        self, workflow_name: str, page_size: int, after: tuple[str, str] | None
    ) -> tuple[list[VersionView], tuple[str, str] | None]:
        """One page of versions (by name, then registration) after the (name,
        version) ``after``, and the cursor of the next page."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        versions = [
            v for v in self._registry.all_versions() if not workflow_name or v.name == workflow_name
        ]
        start = 0
        if after is not None:
            keys = [(v.name, v.version) for v in versions]
            start = keys.index(after) + 1 if after in keys else len(versions)
        page = versions[start : start + size]
        more = start + size < len(versions)
        cursor = (page[-1].name, page[-1].version) if more and page else None
        return [self.view(v) for v in page], cursor

    async def pin(self, name: str, version: str) -> VersionView:
        """Make ``version`` the current version of ``name``."""
        _check(name, version)
        status = await self._store.pin_workflow_version(name, version, now_ms())
        if status is PinStatus.UNKNOWN_VERSION:
            raise NotFound(f"no worker has registered version {version!r} of {name!r}")
        if status is PinStatus.RETIRED:
            raise FailedPrecondition(f"version {version!r} of {name!r} is retired")
        self._registry.pin(name, version)
        return await self._view_of(name, version)

    async def unpin(self, name: str) -> tuple[bool, str]:
        """Remove the pin of ``name``; whether it had one, and its current version now."""
        _check(name)
        had = await self._store.unpin_workflow_version(name)
        self._registry.unpin(name)
        return had, self._registry.current(name) or ""

    async def retire(self, name: str, version: str) -> tuple[VersionView, bool]:
        """Retire a version; return it and whether it was retired before."""
        _check(name, version)
        when = now_ms()
        status = await self._store.retire_workflow_version(name, version, when)
        if status is RetireStatus.UNKNOWN_VERSION:
            raise NotFound(f"no worker has registered version {version!r} of {name!r}")
        if status is RetireStatus.PINNED:
            raise FailedPrecondition(
                f"version {version!r} is the pinned current version of {name!r}; "
                "pin another version or unpin it first"
            )
        if status is RetireStatus.RETIRED:
            self._registry.retire(name, version, when)
        else:  # retired before, perhaps through another replica
            await self.refresh()
        return await self._view_of(name, version), status is RetireStatus.ALREADY_RETIRED

    async def _view_of(self, name: str, version: str) -> VersionView:
        for attempt in range(2):
            for known in self._registry.all_versions():
                if (known.name, known.version) == (name, version):
                    return self.view(known)
            if attempt == 0:  # registered through another replica: not known here yet
                await self.refresh()
        raise NotFound(f"no worker has registered version {version!r} of {name!r}")


def _check(name: str, version: str | None = None) -> None:
    if not name:
        raise InvalidArgument("workflow_name is required")
    if version is not None and not version:
        raise InvalidArgument("version is required")
    if len(name) > MAX_ID_LENGTH or len(version or "") > MAX_ID_LENGTH:
        raise InvalidArgument(f"workflow_name and version are at most {MAX_ID_LENGTH} characters")
