"""Entries as the schedule form shows them, and the API's field names as the form's fields.

Date-times are shown on the wall clock of the form's time zone, without an offset; numbers as
people type them; payloads without the values their contract fills in by default.
"""

from __future__ import annotations

import json
import zoneinfo
from datetime import datetime, tzinfo
from functools import cache
from typing import Any

from django.utils import timezone as django_timezone

from tasklane.beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, ScheduleEntry
from tasklane.contracts import ContractRegistry
from tasklane.contracts.validation import validate_payload
from tasklane.contrib.django.schedules.listing import KINDS
from tasklane.errors import PayloadValidationError, UnknownContractError

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


def form_field(dotted: str, message: str) -> tuple[str | None, str]:
    """The form field a problem concerns, and its message as shown there.

    ``dotted`` is a location as the API names it (``schedule.at``, ``payload.to.0``) or as
    pydantic gives it (``schedule.crontab.timezone``); ``(None, message)`` for the whole form.
    """
    message = message.removeprefix("Value error, ")
    parts = dotted.split(".") if dotted else []
    if parts[:1] == ["payload"]:
        return "payload", f"{'.'.join(parts[1:]) or 'payload'}: {message}"
    if parts[:1] == ["schedule"]:
        rest = [part for part in parts[1:] if part not in {kind for kind, _ in KINDS}]
        if rest:
            return rest[0], message
        named, _, detail = message.partition(":")
        if named in CRON_FIELDS:  # the crontab parser names the field in its message
            return named, detail.strip()
        return "kind", message
    if len(parts) == 1:
        return parts[0], message
    return None, message


def shown_payload(entry: ScheduleEntry, registry: ContractRegistry) -> dict[str, Any]:
    """The payload without the values its contract fills in by default (as it was typed).

    Stored payloads are normalised (every default written out); a payload whose contract is
    gone or that no longer fits is shown as stored.
    """
    try:
        model = validate_payload(registry[entry.task], entry.payload)
    except (UnknownContractError, PayloadValidationError):
        return entry.payload
    shown: dict[str, Any] = model.model_dump(mode="json", exclude_defaults=True)
    return shown


def initial_of(entry: ScheduleEntry, registry: ContractRegistry) -> dict[str, Any]:
    """The form's initial values for an existing entry, times in the entry's time zone."""
    schedule = entry.schedule
    zone = (
        schedule.timezone
        if isinstance(schedule, CrontabSchedule)
        else django_timezone.get_current_timezone_name()
    )
    local = zoneinfo.ZoneInfo(zone)
    initial: dict[str, Any] = {
        "name": entry.name,
        "task": entry.task,
        "payload": json.dumps(shown_payload(entry, registry), indent=2, ensure_ascii=False),
        "description": entry.description,
        "enabled": entry.enabled,
        "kind": schedule.kind,
        "timezone": zone,
        "start_at": in_zone(entry.start_at, local),
        "expires_at": in_zone(entry.expires_at, local),
        "priority": entry.priority,
        "expires_after": plain(entry.expires_after),
    }
    if isinstance(schedule, IntervalSchedule):
        initial["every"] = plain(schedule.every)
    elif isinstance(schedule, CrontabSchedule):
        initial.update({name: getattr(schedule, name) for name in CRON_FIELDS})
    elif isinstance(schedule, ClockedSchedule):
        initial["at"] = in_zone(schedule.at, local)
    return initial


def plain(number: float | None) -> str | None:
    """A number as a field shows it: ``60`` rather than ``60.0``, other values in full."""
    if number is None:
        return None
    return str(int(number)) if number.is_integer() else repr(number)


@cache
def zones() -> list[str]:
    """Every IANA time zone name, sorted (the form's choices)."""
    return sorted(zoneinfo.available_timezones())


def aware(value: datetime | None, zone: tzinfo) -> datetime | None:
    """A date-time typed without an offset, placed in ``zone``; one with an offset as is."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=zone)


def in_zone(value: datetime | None, zone: tzinfo) -> str | None:
    """``value`` as typed in ``zone``'s wall clock, without an offset."""
    return None if value is None else local_text(value.astimezone(zone).replace(tzinfo=None))


def local_text(value: datetime) -> str:
    """``2026-12-01 09:00:00``."""
    # Whole seconds as people type them; anything finer is kept so that saving changes nothing.
    spec = "seconds" if value.microsecond == 0 else "auto"
    return value.isoformat(sep=" ", timespec=spec)
