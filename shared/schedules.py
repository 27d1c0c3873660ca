"""Tenant schedules: cron expressions in a time zone → minimum replicas per PoP — pure.

Shared: the registry validates them when a deployment is put, the autoscaler applies them.

A schedule is active from each time its cron expression fires (in its own time zone, so
08:00 Europe/Berlin stays 08:00 across daylight-saving changes) for `duration_s`. E.g.
weekdays 08:00–18:00 in Berlin, 2 warm in eu-west:
    Schedule(cron="0 8 * * 1-5", timezone="Europe/Berlin", duration_s=36000, pop="eu-west",
             min_replicas=2)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from edgeinfer.shared.events import Schedule

__all__ = ["InvalidSchedule", "Schedule", "is_active", "scheduled_min", "validate"]


class InvalidSchedule(ValueError):
    pass


def validate(schedule: Schedule, allowed_pops: Iterable[str]) -> None:
    if not croniter.is_valid(schedule.cron) or len(schedule.cron.split()) != 5:
        raise InvalidSchedule(f"cron {schedule.cron!r} is not a 5-field cron expression")
    try:
        ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown time zone {schedule.timezone!r} (use an IANA name, "
                              "e.g. Europe/Berlin)") from None
    if not 60 <= schedule.duration_s <= 7 * 86400:
        raise InvalidSchedule("duration_s must be between 60 s and 7 days")
    if schedule.pop not in set(allowed_pops):
        raise InvalidSchedule(f"pop {schedule.pop!r} is not one of the deployment's PoPs")
    if not 1 <= schedule.min_replicas <= 64:
        raise InvalidSchedule("min_replicas of a schedule must be in [1; 64]")


def is_active(schedule: Schedule, now: datetime) -> bool:
    local = now.astimezone(ZoneInfo(schedule.timezone))
    # The latest firing at or before now (a firing exactly now counts).
    last = croniter(schedule.cron, local + timedelta(seconds=1)).get_prev(datetime)
    return local < last + timedelta(seconds=schedule.duration_s)


def scheduled_min(schedules: Iterable[Schedule], pop: str, now: datetime) -> int:
    return max((s.min_replicas for s in schedules if s.pop == pop and is_active(s, now)), default=0)
