"""Cron expressions and time zones, through ``croniter`` and ``zoneinfo``.

Five fields (minute hour day-of-month month day-of-week) or six with a
leading seconds field; ``@hourly``-style aliases too. Occasions are computed
in the schedule's time zone (so "0 9 * * *" is 09:00 local time, across
daylight-saving changes) and returned as epoch milliseconds.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from stepd.server.domain import now_ms
from stepd.server.engine.errors import InvalidArgument
from stepd.server.engine.validation import MAX_ID_LENGTH, shown

MAX_CRON_LENGTH = 200
#: "Never": the occasion after the last one of an expression that ends (one
#: with a year field), the last instant a Timestamp holds.
NEVER_MS = 253_402_300_799_000
#: The longest time zone name (IANA names are far shorter).
MAX_ZONE_LENGTH = MAX_ID_LENGTH


@functools.lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The time zone called ``name``; ValueError for an unknown one (also for a
    name no file system could hold: too long, or with a NUL)."""
    if len(name) > MAX_ZONE_LENGTH or "\x00" in name:
        raise ValueError(f"unknown time zone {shown(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {shown(name)}") from None


def check(cron: str, time_zone: str, field: str) -> None:
    """Raise InvalidArgument naming ``field.cron`` or ``field.time_zone`` when the
    expression or the zone is not valid (or the expression never fires again)."""
    if not cron.strip():
        raise InvalidArgument(f"{field}.cron is required, e.g. '*/5 * * * *'")
    if len(cron) > MAX_CRON_LENGTH:
        raise InvalidArgument(f"{field}.cron is longer than {MAX_CRON_LENGTH} characters")
    if len(time_zone) > MAX_ZONE_LENGTH:
        raise InvalidArgument(
            f"{field}.time_zone is {len(time_zone)} characters; at most {MAX_ZONE_LENGTH}"
        )
    try:
        zone(time_zone)
    except ValueError:
        raise InvalidArgument(
            f"{field}.time_zone {shown(time_zone)} is not a known IANA time zone "
            "(e.g. 'UTC', 'Europe/Paris', 'America/New_York')"
        ) from None
    try:
        _iterator(cron, time_zone, now_ms()).get_next(datetime)
    except (CroniterError, ValueError, OverflowError) as exc:
        raise InvalidArgument(
            f"{field}.cron {shown(cron)} is not a valid cron expression: {str(exc)[:200]} "
            "(five fields 'minute hour day month weekday', or six with seconds first)"
        ) from None


def next_after(cron: str, time_zone: str, after_ms: int) -> int:
    """The first occasion strictly after ``after_ms`` (NEVER_MS after the last one)."""
    try:
        return _ms(_iterator(cron, time_zone, after_ms).get_next(datetime))
    except (CroniterBadDateError, OverflowError):
        return NEVER_MS


def upcoming(cron: str, time_zone: str, from_ms: int, count: int) -> list[int]:
    """The first ``count`` occasions at or after ``from_ms`` (fewer when it ends)."""
    it = _iterator(cron, time_zone, from_ms - 1)
    times: list[int] = []
    try:
        while len(times) < count:
            times.append(_ms(it.get_next(datetime)))
    except (CroniterBadDateError, OverflowError):
        pass
    return times


def last_before(cron: str, time_zone: str, before_ms: int) -> int:
    """The last occasion strictly before ``before_ms``."""
    return _ms(_iterator(cron, time_zone, before_ms).get_prev(datetime))


def _iterator(cron: str, time_zone: str, at_ms: int) -> croniter:
    start = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(zone(time_zone))
    return croniter(cron, start, second_at_beginning=True)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)
