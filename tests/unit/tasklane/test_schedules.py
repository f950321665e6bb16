"""Which slot is due and which comes next, for every kind of schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from celery.schedules import crontab
from pydantic import ValidationError

from tasklane.beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    EntryState,
    IntervalSchedule,
    ScheduleEntry,
    due_slot,
    next_slot,
    slots_between,
)
from tasklane.beat.sources import entries_from_beat_schedule, entries_from_file
from tasklane.errors import PayloadValidationError, UnknownContractError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
IM = {"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}


def entry(
    schedule: IntervalSchedule | CrontabSchedule | ClockedSchedule, **fields: object
) -> ScheduleEntry:
    return ScheduleEntry.model_validate(
        {"name": "e", "task": "notifier.im.send", "payload": IM, "schedule": schedule,
         "created_at": T0, **fields}
    )  # fmt: skip


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_interval_slots_start_one_interval_after_creation() -> None:
    every = entry(IntervalSchedule(every=10))
    fresh = EntryState()
    assert due_slot(every, fresh, at(9)) is None
    assert next_slot(every, fresh, at(9)) == at(10)
    assert due_slot(every, fresh, at(25)) == at(20)  # missed slots are not fired in a burst
    fired = EntryState(last_slot=at(20), total_run_count=1)
    assert due_slot(every, fired, at(29)) is None
    assert next_slot(every, fired, at(29)) == at(30)


def test_interval_with_a_start_runs_at_the_start_and_stops_at_expiry() -> None:
    windowed = entry(IntervalSchedule(every=10), start_at=at(100), expires_at=at(125))
    assert next_slot(windowed, EntryState(), at(0)) == at(100)
    assert due_slot(windowed, EntryState(last_slot=at(120)), at(129)) is None
    assert next_slot(windowed, EntryState(last_slot=at(120)), at(121)) is None


def test_disabled_entries_have_no_slots() -> None:
    off = entry(IntervalSchedule(every=1), enabled=False)
    assert due_slot(off, EntryState(), at(100)) is None
    assert next_slot(off, EntryState(), at(100)) is None


def test_clocked_entries_fire_once() -> None:
    once = entry(ClockedSchedule(at=at(60)))
    assert next_slot(once, EntryState(), at(0)) == at(60)
    assert due_slot(once, EntryState(), at(61)) == at(60)
    done = EntryState(last_slot=at(60), total_run_count=1)
    assert due_slot(once, done, at(120)) is None
    assert next_slot(once, done, at(120)) is None


def test_clocked_time_needs_an_offset() -> None:
    with pytest.raises(ValidationError, match="time zone offset"):
        ClockedSchedule(at=datetime(2026, 12, 1, 9, 0))  # noqa: DTZ001


def test_crontab_slots_follow_the_wall_clock_of_their_zone() -> None:
    daily = entry(CrontabSchedule(minute="0", hour="9", timezone="Europe/Berlin"))
    # 2026-03-01 is winter time (UTC+1): 09:00 in Berlin is 08:00 UTC.
    assert next_slot(daily, EntryState(), T0) == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert due_slot(daily, EntryState(), datetime(2026, 3, 2, 8, 0, 30, tzinfo=UTC)) == datetime(
        2026, 3, 2, 8, 0, tzinfo=UTC
    )
    # Slots before the entry was made are not owed.
    assert due_slot(daily, EntryState(), T0) is None


def test_entries_are_checked_against_their_contract() -> None:
    with pytest.raises(UnknownContractError, match="billing.invoice.send"):
        entry(IntervalSchedule(every=5), task="billing.invoice.send").validated()
    with pytest.raises(PayloadValidationError, match="url"):
        entry(IntervalSchedule(every=5), payload={"channel": "webhook", "text": "x"}).validated()
    with pytest.raises(ValidationError, match="hour"):
        CrontabSchedule(hour="25")


def test_celery_beat_schedule_styles_become_entries() -> None:
    app = Celery("seed", set_as_current=False)
    app.conf.timezone = "Asia/Tokyo"
    weekly_at_7 = crontab(minute=0, hour=7, day_of_week="mon")
    task = "notifier.im.send"
    app.conf.beat_schedule = {
        "every-30s": {"task": task, "schedule": 30.0, "kwargs": IM},
        "weekly": {"task": task, "schedule": weekly_at_7, "kwargs": IM},
        "positional": {"task": task, "schedule": timedelta(minutes=1), "args": ("x",)},
    }
    app.add_periodic_task(5.0, app.signature("notifier.im.send", kwargs=IM))  # unnamed
    entries, problems = entries_from_beat_schedule(app)
    by_name = {e.name: e for e in entries}
    assert by_name["every-30s"].schedule == IntervalSchedule(every=30)
    weekly = by_name["weekly"].schedule
    assert isinstance(weekly, CrontabSchedule) and weekly.timezone == "Asia/Tokyo"
    assert (weekly.hour, weekly.day_of_week) == ("7", "mon")
    assert any(name.startswith("code-") for name in by_name)  # the repr-named periodic task
    assert set(problems) == {"code:positional"} and "kwargs" in problems["code:positional"]


def test_schedule_files_load_valid_entries_and_report_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "schedules:\n"
        "  - {name: ok, task: notifier.im.send, schedule: {kind: interval, every: 60},\n"
        f"     payload: {IM}}}\n"
        "  - {name: nope, task: notifier.im.send, schedule: {kind: crontab, hour: '99'}}\n"
    )
    entries, problems = entries_from_file(path)
    assert [e.name for e in entries] == ["ok"] and entries[0].source == "file"
    assert list(problems) == ["file:nope"] and "hour" in problems["file:nope"]
    path.write_text("schedules: {not: a list}\n")
    assert entries_from_file(path)[1] == {
        "file": f"{path}: expected a mapping with a 'schedules' list"
    }


def test_missed_slots_are_counted_between_the_last_and_the_fired_one() -> None:
    every = entry(IntervalSchedule(every=10))
    assert slots_between(every, None, at(30)) == 0
    assert slots_between(every, at(10), at(20)) == 0
    assert slots_between(every, at(10), at(50)) == 3
    hourly = entry(CrontabSchedule(minute="0"))
    assert slots_between(hourly, at(0), at(4 * 3600)) == 3
