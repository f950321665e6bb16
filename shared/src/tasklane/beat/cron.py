"""When a crontab schedule fires: its fields parsed once, and its fire times as real instants.

The fields of :class:`tasklane.beat.models.CrontabSchedule` are read the way Vixie cron and cronie
read them, in the schedule's time zone; fire times are whole-minute aware datetimes in UTC.
Design: docs/beat.md#crontab-fields.
"""

from __future__ import annotations

import functools
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import chain
from types import MappingProxyType
from typing import Protocol
from zoneinfo import ZoneInfo

from celery.schedules import ParseException, crontab_parser


class CrontabFields(Protocol):
    """The five cron fields and a time zone (:class:`tasklane.beat.models.CrontabSchedule`)."""

    @property
    def minute(self) -> str: ...
    @property
    def hour(self) -> str: ...
    @property
    def day_of_month(self) -> str: ...
    @property
    def month_of_year(self) -> str: ...
    @property
    def day_of_week(self) -> str: ...
    @property
    def timezone(self) -> str: ...


_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)
# 29 February falls on a given weekday at least once every 40 years, so any schedule that can
# fire at all fires within this window.
_SEARCH_YEARS = 41
_LOOKBACK = timedelta(days=366)
# Parsed schedules and days of fire times kept, shared by every entry with the same fields: a
# tick asks for the same few days of each schedule again and again. A day is at most 1,440
# fire times as 8-byte seconds (11 KB), so the day cache stays under 50 MB whatever it holds.
_PARSED_CACHE = 4096
_DAY_CACHE = 4096
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month can have
# "*", "5", "1-5", "*/15" or "1-5/2": a step needs "*" or a range before it, as in cron.
_PART = re.compile(
    r"(?:\*|(?P<start>[0-9]+|[a-z]+)-(?P<end>[0-9]+|[a-z]+))(?:/(?P<step>[0-9]+))?"
    r"|(?P<value>[0-9]+|[a-z]+)"
)


def _names(full_names: tuple[str, ...], first: int) -> Mapping[str, int]:
    """Full names and their three-letter abbreviations, numbered from ``first``."""
    table: dict[str, int] = {}
    for number, name in enumerate(full_names, start=first):
        table[name] = table[name[:3]] = number
    return MappingProxyType(table)


@dataclass(frozen=True)
class _Field:
    """One crontab field: its name in errors, its bounds and the names it accepts."""

    name: str
    low: int
    high: int
    names: Mapping[str, int]
    spelled: str = ""  # the names, for error messages
    note: str = ""


_NO_NAMES: Mapping[str, int] = MappingProxyType({})
_WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_MINUTE_FIELD = _Field("minute", 0, 59, _NO_NAMES)
_HOUR_FIELD = _Field("hour", 0, 23, _NO_NAMES)
_DOM_FIELD = _Field("day_of_month", 1, 31, _NO_NAMES)
_MONTH_FIELD = _Field("month_of_year", 1, 12, _names(_MONTHS, 1), "jan-dec")
_DOW_FIELD = _Field("day_of_week", 0, 6, _names(_WEEKDAYS, 0), "sun-sat", " (0 is Sunday)")


@dataclass(frozen=True)
class ParsedCron:
    """A crontab schedule expanded to the sets of values each field matches."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 is Sunday .. 6 is Saturday
    zone: ZoneInfo
    dom_restricted: bool  # day_of_month does not start with "*"
    dow_restricted: bool  # day_of_week does not start with "*"
    wildcard_time: bool = False  # minute or hour starts with "*": fires in both repeated hours


def parse_crontab(schedule: CrontabFields) -> ParsedCron:
    """Expand the schedule's fields; a bad field raises ``ValueError`` naming the field.

    Each distinct set of fields is parsed once, and the result shared: Beat loads thousands of
    entries, many with the same schedule, and every fire time asked for starts here.
    """
    return _parse_fields(
        _Fields(
            schedule.minute,
            schedule.hour,
            schedule.day_of_month,
            schedule.month_of_year,
            schedule.day_of_week,
            schedule.timezone,
        )
    )


@dataclass(frozen=True)
class _Fields:
    """A schedule's fields as a cache key (the schedule passed in need not be hashable)."""

    minute: str
    hour: str
    day_of_month: str
    month_of_year: str
    day_of_week: str
    timezone: str


@functools.lru_cache(maxsize=_PARSED_CACHE)
def _parse_fields(schedule: _Fields) -> ParsedCron:
    days = _parse_field(_DOM_FIELD, schedule.day_of_month)
    months = _parse_field(_MONTH_FIELD, schedule.month_of_year)
    dom_restricted = not _is_star(schedule.day_of_month)
    dow_restricted = not _is_star(schedule.day_of_week)
    parsed = ParsedCron(
        minutes=_parse_field(_MINUTE_FIELD, schedule.minute),
        hours=_parse_field(_HOUR_FIELD, schedule.hour),
        days_of_month=days,
        months=months,
        days_of_week=_parse_field(_DOW_FIELD, schedule.day_of_week),
        zone=ZoneInfo(schedule.timezone),
        dom_restricted=dom_restricted,
        dow_restricted=dow_restricted,
        wildcard_time=_is_star(schedule.minute) or _is_star(schedule.hour),
    )
    if not (dom_restricted and dow_restricted):  # the day of month must then occur
        _check_day_occurs(days, months)
    return parsed


def next_fire(schedule: CrontabFields | ParsedCron, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (aware), in UTC.

    Raises:
        ValueError: ``after`` is naive, or the schedule never fires (e.g. a hand-built
            :class:`ParsedCron` asking for 31 February).
    """
    cron = _parsed(schedule)
    first_day = _local_date(after, cron.zone) - _DAY  # a gap can push a fire to the next day
    moment = after.timestamp()
    for day in _matching_days(cron, first_day, 1, _SEARCH_YEARS * 366):
        fires = _day_fire_seconds(cron, day)
        index = bisect_right(fires, moment)
        if index < len(fires):
            return datetime.fromtimestamp(fires[index], UTC)
    raise ValueError(f"the schedule does not fire within {_SEARCH_YEARS} years after {after}")


def last_fire(schedule: CrontabFields | ParsedCron, at_or_before: datetime) -> datetime | None:
    """The latest fire time not after ``at_or_before`` (aware), in UTC.

    None when the schedule did not fire in the 366 days up to ``at_or_before``: a yearly
    schedule always has one there, and looking further back is never needed to catch up.
    """
    cron = _parsed(schedule)
    first_day = _local_date(at_or_before, cron.zone) + _DAY
    moment = at_or_before.timestamp()
    floor = (at_or_before - _LOOKBACK).timestamp()
    for day in _matching_days(cron, first_day, -1, _LOOKBACK.days + 3):
        fires = _day_fire_seconds(cron, day)
        index = bisect_right(fires, moment)
        if index:
            fire = fires[index - 1]
            return datetime.fromtimestamp(fire, UTC) if fire >= floor else None
    return None


def _is_star(spec: str) -> bool:
    """Cron's test for an unrestricted field: it starts with ``*`` (so ``*/2`` counts)."""
    return spec.strip().startswith("*")


def _parse_field(field: _Field, spec: str) -> frozenset[int]:
    """Check the field strictly, then let Celery's parser expand it."""
    text = spec.strip().lower()
    for part in text.split(","):
        _check_part(field, part)
    try:
        values = crontab_parser(field.high - field.low + 1, field.low).parse(text)
    except (ParseException, ValueError) as exc:
        raise ValueError(f"{field.name}: {exc}") from None
    return frozenset(int(value) for value in values)


def _check_part(field: _Field, part: str) -> None:
    """Refuse what Celery would silently half-read (``1-5-7``, ``*/2/3``) or misread."""
    match = _PART.fullmatch(part)
    if match is None:
        raise ValueError(
            f"{field.name}: cannot read {part!r}; expected items like 5, 1-5, *, 1-5/2 or */15, "
            "separated by commas"
        )
    for token in (match["start"], match["end"], match["value"]):
        if token is not None:
            _check_value(field, token)
    if match["step"] is not None and int(match["step"]) == 0:
        raise ValueError(f"{field.name}: {part!r} has a step of 0; a step must be at least 1")


def _check_value(field: _Field, token: str) -> None:
    """A number within the field's bounds, or a name the field accepts."""
    if token.isdigit():
        if not field.low <= int(token) <= field.high:
            raise ValueError(
                f"{field.name}: {int(token)} is out of range {field.low}-{field.high}{field.note}"
            )
    elif token not in field.names:
        spelled = f" or {field.spelled}" if field.spelled else ""
        raise ValueError(
            f"{field.name}: {token!r} is not a value; use {field.low}-{field.high}{spelled}"
        )


def _check_day_occurs(days: frozenset[int], months: frozenset[int]) -> None:
    """Refuse a schedule whose every day of month is past the end of every month it names."""
    if any(min(days) <= _MONTH_DAYS[month - 1] for month in months):
        return
    raise ValueError(
        f"day_of_month: {sorted(days)} does not occur in month_of_year {sorted(months)}, "
        "so the schedule would never fire"
    )


def _parsed(schedule: CrontabFields | ParsedCron) -> ParsedCron:
    return schedule if isinstance(schedule, ParsedCron) else parse_crontab(schedule)


def _local_date(moment: datetime, zone: ZoneInfo) -> date:
    """The date on the zone's wall clock at ``moment``, which must be aware."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; pass an aware datetime")
    return moment.astimezone(zone).date()


def _matching_days(cron: ParsedCron, first: date, step: int, count: int) -> Iterator[date]:
    """The days among ``count`` days from ``first`` (``step`` 1 forward, -1 backward) that match."""
    day = first
    for _ in range(count):
        if _day_matches(cron, day):
            yield day
        day += step * _DAY


def _day_matches(cron: ParsedCron, day: date) -> bool:
    """Month, then day of month and day of week with cron's either-or rule."""
    if day.month not in cron.months:
        return False
    by_date = day.day in cron.days_of_month
    by_weekday = day.isoweekday() % 7 in cron.days_of_week
    if cron.dom_restricted and cron.dow_restricted:
        return by_date or by_weekday
    return by_date and by_weekday


@functools.lru_cache(maxsize=_DAY_CACHE)
def _day_fire_seconds(cron: ParsedCron, day: date) -> array[int]:
    """:func:`_day_fires` as Unix seconds (whole minutes, so exact), sorted."""
    return array("q", (int(fire.timestamp()) for fire in _day_fires(cron, day)))


def _day_fires(cron: ParsedCron, day: date) -> list[datetime]:
    """The instants a matching day's wall times fire at, sorted and without duplicates."""
    fires: set[datetime] = set()
    for hour in cron.hours:
        fires.update(_hour_fires(cron, datetime.combine(day, time(hour))))
    return sorted(fires)


def _hour_fires(cron: ParsedCron, start: datetime) -> Iterator[datetime]:
    """The instants of one wall-clock hour's matching minutes.

    An hour without a transition is one offset throughout, which spares a zone lookup per
    minute; only the hour of a transition resolves each minute on its own.
    """
    offset = _steady_offset(cron.zone, start)
    if offset is not None:
        base = (start - offset).replace(tzinfo=UTC)
        return (base + minute * _MINUTE for minute in cron.minutes)
    return chain.from_iterable(
        _wall_fires(cron, start.replace(minute=minute)) for minute in cron.minutes
    )


def _steady_offset(zone: ZoneInfo, start: datetime) -> timedelta | None:
    """The zone's offset for the whole wall-clock hour from ``start``, None if it changes.

    A gap or a repeat anywhere in the hour shows as two readings of its first or its last
    minute (``fold`` 0 and 1) that differ, or as a first minute and a last minute that differ.
    """
    offsets = {
        wall.replace(tzinfo=zone, fold=fold).utcoffset()
        for wall in (start, start.replace(minute=59))
        for fold in (0, 1)
    }
    return offsets.pop() if len(offsets) == 1 else None


def _wall_fires(cron: ParsedCron, wall: datetime) -> tuple[datetime, ...]:
    """The instants one wall time fires at: one, two in a repeated hour, the gap's end in a gap.

    ``zoneinfo`` resolves a naive wall time with the offsets on either side of a transition
    (``fold`` 0 and 1): equal instants mean an ordinary time, the earlier first means the time
    occurs twice, the later first means it does not exist.
    """
    first = wall.replace(tzinfo=cron.zone).astimezone(UTC)
    second = wall.replace(tzinfo=cron.zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if first < second:
        return (first, second) if cron.wildcard_time else (first,)
    return (_gap_end(cron.zone, second, first),)


def _gap_end(zone: ZoneInfo, earliest: datetime, latest: datetime) -> datetime:
    """The first whole minute on the new offset, between the two readings of a gap time."""
    before = earliest.astimezone(zone).utcoffset()
    steps = range(1, int((latest - earliest) / _MINUTE) + 1)
    index = bisect_left(
        steps, True, key=lambda k: (earliest + k * _MINUTE).astimezone(zone).utcoffset() != before
    )
    return earliest + steps[index] * _MINUTE
