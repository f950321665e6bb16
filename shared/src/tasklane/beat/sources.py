"""Where Beat's entries come from besides the store: a YAML file and the app's ``beat_schedule``.

Each reader returns the valid entries and a problem per invalid one, so one bad entry never
hides the others; Beat reports the problems in its status.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from celery import Celery
from pydantic import ValidationError

from tasklane.beat.models import (
    ENTRY_NAME_PATTERN,
    CrontabSchedule,
    IntervalSchedule,
    ScheduleEntry,
)
from tasklane.errors import TasklaneError


def entries_from_file(path: Path) -> tuple[list[ScheduleEntry], dict[str, str]]:
    """Valid entries of a YAML schedule file, and the problems of the others.

    The file holds ``schedules:``, a list of entries as the API takes them.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [], {"file": f"{path}: cannot read: {exc}"}
    items = document.get("schedules", []) if isinstance(document, dict) else None
    if not isinstance(items, list):
        return [], {"file": f"{path}: expected a mapping with a 'schedules' list"}
    entries: list[ScheduleEntry] = []
    problems: dict[str, str] = {}
    for index, item in enumerate(items):
        label = item.get("name", f"#{index}") if isinstance(item, dict) else f"#{index}"
        try:
            entry = ScheduleEntry.model_validate({**item, "source": "file"})
            entries.append(entry.validated())
        except (ValidationError, TasklaneError, TypeError) as exc:
            problems[f"file:{label}"] = f"{path}: schedule {label}: {one_line(exc)}"
    return entries, problems


def entries_from_beat_schedule(app: Celery) -> tuple[list[ScheduleEntry], dict[str, str]]:
    """Entries of ``app.conf.beat_schedule`` (``add_periodic_task`` included), and problems."""
    entries: list[ScheduleEntry] = []
    problems: dict[str, str] = {}
    timezone = str(app.conf.timezone or "UTC")
    for key, spec in dict(app.conf.beat_schedule or {}).items():
        name = _entry_name(key)
        try:
            entries.append(_from_celery(name, spec, timezone).validated())
        except (ValidationError, TasklaneError, ValueError, TypeError) as exc:
            problems[f"code:{name}"] = f"beat_schedule {key!r}: {one_line(exc)}"
    return entries, problems


def _from_celery(name: str, spec: Mapping[str, Any], timezone: str) -> ScheduleEntry:
    if spec.get("args"):
        raise ValueError("positional args: a contract's payload is keyword arguments (kwargs)")
    return ScheduleEntry(
        name=name,
        task=spec["task"],
        payload=dict(spec.get("kwargs") or {}),
        schedule=_celery_schedule(spec["schedule"], timezone),
        source="code",
    )


def _celery_schedule(value: Any, timezone: str) -> IntervalSchedule | CrontabSchedule:
    from celery.schedules import crontab, schedule

    if isinstance(value, int | float):
        return IntervalSchedule(every=float(value))
    if isinstance(value, timedelta):
        return IntervalSchedule(every=value.total_seconds())
    if isinstance(value, crontab):
        return CrontabSchedule(
            minute=str(value._orig_minute),
            hour=str(value._orig_hour),
            day_of_month=str(value._orig_day_of_month),
            month_of_year=str(value._orig_month_of_year),
            day_of_week=str(value._orig_day_of_week),
            timezone=timezone,
        )
    if isinstance(value, schedule):
        return IntervalSchedule(every=value.run_every.total_seconds())
    raise ValueError(f"unsupported schedule {type(value).__name__}: use seconds or crontab")


def _entry_name(key: str) -> str:
    # add_periodic_task names entries after the signature's repr unless given a name.
    if re.fullmatch(ENTRY_NAME_PATTERN, key):
        return key
    return f"code-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def one_line(exc: BaseException) -> str:
    """The text of ``exc`` on one line, for a status or log entry."""
    return " ".join(str(exc).split())
