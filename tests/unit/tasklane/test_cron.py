from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from tasklane.beat.cron import ParsedCron, last_fire, next_fire, parse_crontab
from tasklane.beat.models import CrontabSchedule

MINUTE = timedelta(minutes=1)


def cron(spec: str, timezone: str = "UTC") -> CrontabSchedule:
    """A schedule from a classic five-field line, e.g. ``"0 9 * * mon-fri"``."""
    minute, hour, day_of_month, month_of_year, day_of_week = spec.split()
    return CrontabSchedule(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        timezone=timezone,
    )


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


def fires(schedule: CrontabSchedule | ParsedCron, after: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    for _ in range(count):
        after = next_fire(schedule, after)
        found.append(after)
    return found


# --- parsing ---------------------------------------------------------------------------------


def test_parse_expands_fields_and_names() -> None:
    parsed = parse_crontab(cron("*/20 9-11 1,15 jan-mar fri-mon", "Europe/Berlin"))
    assert parsed.minutes == {0, 20, 40}
    assert parsed.hours == {9, 10, 11}
    assert parsed.days_of_month == {1, 15}
    assert parsed.months == {1, 2, 3}
    assert parsed.days_of_week == {5, 6, 0, 1}  # wraps past Saturday, 0 is Sunday
    assert parsed.zone == ZoneInfo("Europe/Berlin")
    assert (parsed.dom_restricted, parsed.dow_restricted, parsed.wildcard_time) == (
        True,
        True,
        True,
    )


def test_parse_accepts_full_names_and_sunday_as_zero() -> None:
    parsed = parse_crontab(cron("0 0 * January,december Sunday,sat"))
    assert parsed.months == {1, 12}
    assert parsed.days_of_week == {0, 6}
    assert not parsed.wildcard_time


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"hour": "25"}, "hour: 25 is out of range 0-23"),
        ({"minute": "*/0"}, "minute: '*/0' has a step of 0"),
        ({"minute": "60"}, "minute: 60 is out of range 0-59"),
        ({"day_of_week": "funday"}, "day_of_week: 'funday' is not a value"),
        ({"day_of_week": "7"}, "day_of_week: 7 is out of range 0-6 (0 is Sunday)"),
        ({"day_of_week": "mar"}, "day_of_week: 'mar' is not a value"),  # a month, not a day
        ({"month_of_year": "0"}, "month_of_year: 0 is out of range 1-12"),
        ({"month_of_year": "mon"}, "month_of_year: 'mon' is not a value"),
        ({"day_of_month": "0"}, "day_of_month: 0 is out of range 1-31"),
        ({"hour": "jan"}, "hour: 'jan' is not a value"),
        ({"minute": "1-5-7"}, "minute: cannot read '1-5-7'"),
        ({"minute": "*/15/2"}, "minute: cannot read '*/15/2'"),
        ({"minute": "5/15"}, "minute: cannot read '5/15'"),
        ({"hour": "1,,2"}, "hour: cannot read ''"),
        ({"hour": ""}, "hour: cannot read ''"),
        ({"minute": "-5"}, "minute: cannot read '-5'"),
        ({"day_of_month": "31", "month_of_year": "2"}, "day_of_month: [31] does not occur"),
        ({"day_of_month": "30,31", "month_of_year": "feb"}, "day_of_month: [30, 31] does not"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CrontabSchedule(**fields)
    assert problem in str(caught.value)


def test_bad_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        CrontabSchedule(timezone="Mars/Olympus")


def test_day_of_month_past_february_is_fine_when_weekdays_also_select_days() -> None:
    # Both day fields restricted: either matches, so Mondays of February still fire.
    assert next_fire(cron("0 0 31 2 mon"), utc(2026, 1, 1)) == utc(2026, 2, 2)


# --- basics ----------------------------------------------------------------------------------


def test_every_15_minutes() -> None:
    assert fires(cron("*/15 * * * *"), utc(2026, 5, 1, 10, 7, 30), 4) == [
        utc(2026, 5, 1, 10, 15),
        utc(2026, 5, 1, 10, 30),
        utc(2026, 5, 1, 10, 45),
        utc(2026, 5, 1, 11, 0),
    ]


def test_next_fire_is_strictly_after() -> None:
    assert next_fire(cron("*/15 * * * *"), utc(2026, 5, 1, 10, 15)) == utc(2026, 5, 1, 10, 30)


def test_weekdays_skip_the_weekend() -> None:
    friday = utc(2026, 5, 8, 9, 0)
    assert next_fire(cron("0 9 * * mon-fri"), friday) == utc(2026, 5, 11, 9, 0)  # Monday
    assert last_fire(cron("0 9 * * mon-fri"), utc(2026, 5, 10, 23)) == friday


def test_first_of_the_month() -> None:
    assert fires(cron("0 0 1 * *"), utc(2026, 1, 15), 3) == [
        utc(2026, 2, 1),
        utc(2026, 3, 1),
        utc(2026, 4, 1),
    ]


def test_both_day_fields_restricted_match_either() -> None:
    # The 13th or any Friday: in early 2026 every 13th is a Friday, until Monday 13 April.
    found = fires(cron("0 12 13 * fri"), utc(2026, 2, 1), 10)
    assert [(f.month, f.day) for f in found] == [
        (2, 6), (2, 13), (2, 20), (2, 27), (3, 6), (3, 13), (3, 20), (3, 27), (4, 3), (4, 10),
    ]  # fmt: skip
    assert next_fire(cron("0 12 13 * fri"), utc(2026, 4, 10, 12)) == utc(2026, 4, 13, 12)


def test_star_step_day_field_counts_as_unrestricted() -> None:
    # Cron's rule: "*/2" starts with "*", so both day fields must match (odd days AND Monday).
    found = fires(cron("0 0 */2 * mon"), utc(2026, 6, 1), 3)
    assert all(f.weekday() == 0 and f.day % 2 == 1 for f in found)
    assert found[0] == utc(2026, 6, 1, 0, 0) + timedelta(days=14)  # Mon 15 June


def test_february_29_is_found_in_a_leap_year() -> None:
    schedule = cron("0 0 29 2 *")
    assert next_fire(schedule, utc(2026, 3, 1)) == utc(2028, 2, 29)
    assert next_fire(schedule, utc(2096, 3, 1)) == utc(2104, 2, 29)  # 2100 is not a leap year
    assert last_fire(schedule, utc(2028, 12, 31)) == utc(2028, 2, 29)
    assert last_fire(schedule, utc(2029, 3, 1)) == utc(2028, 2, 29)  # 366 days back
    assert last_fire(schedule, utc(2029, 3, 1, 0, 1)) is None  # further back


def test_a_schedule_that_never_fires_raises() -> None:
    never = dataclasses.replace(
        parse_crontab(cron("0 0 * * *")),
        days_of_month=frozenset({31}),
        months=frozenset({2}),
        dom_restricted=True,
    )
    with pytest.raises(ValueError, match="does not fire within 41 years"):
        next_fire(never, utc(2026, 1, 1))
    assert last_fire(never, utc(2026, 1, 1)) is None


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        next_fire(cron("* * * * *"), datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="no time zone"):
        last_fire(cron("* * * * *"), datetime(2026, 1, 1))


def test_results_are_whole_minutes_in_utc() -> None:
    after = datetime(2026, 5, 1, 12, 0, 59, 999_999, tzinfo=ZoneInfo("Asia/Kolkata"))
    found = next_fire(cron("* * * * *", "Asia/Kolkata"), after)
    assert found == utc(2026, 5, 1, 6, 31)
    assert found.tzinfo is UTC and found.second == 0 and found.microsecond == 0
    assert last_fire(cron("* * * * *"), after) == utc(2026, 5, 1, 6, 30)


# --- time zones ------------------------------------------------------------------------------


def test_tokyo_nine_is_midnight_utc() -> None:
    assert next_fire(cron("0 9 * * *", "Asia/Tokyo"), utc(2026, 7, 1, 1)) == utc(2026, 7, 2)


def test_new_york_nine_follows_daylight_saving() -> None:
    schedule = cron("0 9 * * *", "America/New_York")
    assert next_fire(schedule, utc(2026, 7, 1)) == utc(2026, 7, 1, 13)
    assert next_fire(schedule, utc(2026, 1, 15)) == utc(2026, 1, 15, 14)


# --- DST, Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC) -----------------------


def test_spring_forward_fixed_time_in_the_gap_fires_once_at_the_gap_end() -> None:
    assert fires(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_spring_forward_every_15_minutes_has_no_duplicates() -> None:
    found = fires(cron("*/15 * * * *", "Europe/Berlin"), utc(2026, 3, 29, 0, 30), 5)
    assert found == [
        utc(2026, 3, 29, 0, 45),  # 01:45 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST: the gap's 02:xx and 03:00 itself, once
        utc(2026, 3, 29, 1, 15),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 29, 1, 45),
    ]


def test_spring_forward_gap_minutes_of_a_fixed_hour_collapse_into_one_fire() -> None:
    found = fires(cron("*/15 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 23), 2)
    assert found == [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 0)]


# --- DST, Europe/Berlin: 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC) -----------------------


def test_fall_back_fixed_time_fires_once_at_the_first_occurrence() -> None:
    found = fires(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), 2)
    assert found == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert last_fire(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 25, 1, 45)) == utc(
        2026, 10, 25, 0, 30
    )


def test_fall_back_hourly_fires_every_real_hour() -> None:
    found = fires(cron("0 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 23, 30), 4)
    assert found == [
        utc(2026, 10, 25, 0),  # 02:00 CEST
        utc(2026, 10, 25, 1),  # 02:00 CET
        utc(2026, 10, 25, 2),  # 03:00 CET
        utc(2026, 10, 25, 3),
    ]


def test_fall_back_every_15_minutes_of_a_fixed_hour_runs_in_both_hours() -> None:
    # The minute field starts with "*": a wildcard job, as in cron.
    found = fires(cron("*/15 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 23), 9)
    assert found == [utc(2026, 10, 25, 0, m) for m in (0, 15, 30, 45)] + [
        utc(2026, 10, 25, 1, m) for m in (0, 15, 30, 45)
    ] + [utc(2026, 10, 26, 1, 0)]


# --- DST, America/New_York: 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC) ---------------------


def test_new_york_fall_back() -> None:
    assert fires(cron("30 1 * * *", "America/New_York"), utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT only
        utc(2026, 11, 2, 6, 30),
    ]
    assert fires(cron("30 * * * *", "America/New_York"), utc(2026, 11, 1, 4, 45), 3) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 6, 30),  # 01:30 EST
        utc(2026, 11, 1, 7, 30),  # 02:30 EST
    ]


def test_new_york_spring_forward() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC)
    assert fires(cron("30 2 * * *", "America/New_York"), utc(2026, 3, 7, 12), 2) == [
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 9, 6, 30),
    ]


# --- against a minute-by-minute reference ----------------------------------------------------


def reference_fires(schedule: CrontabSchedule, start: datetime, end: datetime) -> list[datetime]:
    """Walk every real minute: fire on a match, once for repeats unless wildcard, and at a gap's
    end for the wall minutes it skipped."""
    parsed = parse_crontab(schedule)
    found: list[datetime] = []
    instant = start
    while instant < end:
        local = instant.astimezone(parsed.zone)
        wall = local.replace(tzinfo=None)
        previous = (instant - MINUTE).astimezone(parsed.zone).replace(tzinfo=None)
        walls = [wall] if local.fold == 0 or parsed.wildcard_time else []
        walls += [previous + k * MINUTE for k in range(1, (wall - previous) // MINUTE)]
        if any(reference_matches(parsed, w) for w in walls):
            found.append(instant)
        instant += MINUTE
    return found


def reference_matches(parsed: ParsedCron, wall: datetime) -> bool:
    by_date = wall.day in parsed.days_of_month
    by_weekday = (wall.weekday() + 1) % 7 in parsed.days_of_week
    either = parsed.dom_restricted and parsed.dow_restricted
    return (
        wall.minute in parsed.minutes
        and wall.hour in parsed.hours
        and wall.month in parsed.months
        and ((by_date or by_weekday) if either else (by_date and by_weekday))
    )


@pytest.mark.parametrize(
    "spec", ["*/15 * * * *", "30 2 * * *", "0 * * * *", "5-50/15 1-3 * * *", "45 1,2 25,29 * sun"]
)
@pytest.mark.parametrize(
    "timezone, start",
    [
        ("Europe/Berlin", utc(2026, 3, 28, 20)),
        ("Europe/Berlin", utc(2026, 10, 24, 20)),
        ("America/New_York", utc(2026, 11, 1, 1)),
        ("Australia/Lord_Howe", utc(2026, 4, 4, 12)),  # falls back by 30 minutes
        ("Australia/Lord_Howe", utc(2026, 10, 3, 12)),  # springs forward by 30 minutes
    ],
)
def test_matches_a_minute_by_minute_reference(spec: str, timezone: str, start: datetime) -> None:
    schedule = cron(spec, timezone)
    end = start + timedelta(hours=12)
    expected = reference_fires(schedule, start - MINUTE, end)
    found = [f for f in fires(schedule, start - MINUTE, len(expected) + 1) if f < end]
    assert found == expected


# --- last_fire agrees with next_fire ---------------------------------------------------------

INSTANTS = [
    utc(2026, 3, 29, 0, 59) + k * timedelta(hours=7, minutes=13, seconds=17) for k in range(40)
] + [utc(2026, 10, 25, 0, 14) + k * timedelta(minutes=23, seconds=30) for k in range(12)]


@pytest.mark.parametrize(
    "spec, timezone",
    [
        ("*/15 * * * *", "Europe/Berlin"),
        ("30 2 * * *", "Europe/Berlin"),
        ("0 * * * *", "Europe/Berlin"),
        ("0 9 * * mon-fri", "America/New_York"),
        ("0 12 13 * fri", "Asia/Tokyo"),
        ("*/7 2 * * *", "Europe/Berlin"),
    ],
)
def test_last_fire_is_consistent_with_next_fire(spec: str, timezone: str) -> None:
    parsed = parse_crontab(cron(spec, timezone))
    for instant in INSTANTS:
        latest = last_fire(parsed, instant)
        assert latest is not None
        assert latest <= instant
        assert next_fire(parsed, latest) > instant
        following = next_fire(parsed, instant)
        assert last_fire(parsed, following) == following
