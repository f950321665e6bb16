"""django-celery-beat's ``PeriodicTask`` rows as Tasklane schedule entries, or the reason why not.

Each row becomes an entry, a skip (nothing is left to import) or a refusal naming what Tasklane
cannot express; nothing is guessed. ``manage.py tasklane_import_beat`` runs it. What maps to what:
docs/migrating-from-celery.md#importing-from-django-celery-beat.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from tasklane.beat import cron
from tasklane.beat.client import Schedules
from tasklane.beat.models import (
    ENTRY_NAME_PATTERN,
    Actor,
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    ScheduleEntry,
)
from tasklane.beat.sources import one_line
from tasklane.contracts import ContractRegistry
from tasklane.contracts.validation import validate_payload
from tasklane.errors import PayloadValidationError, TasklaneError

#: Celery's own task that django-celery-beat schedules to delete expired results.
BACKEND_CLEANUP = "celery.backend_cleanup"
#: The shortest interval kept: Beat fires an entry at most once per tick (1 s by default).
MIN_INTERVAL = 1.0
_CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

CeleryBroker = Literal["redis", "rabbitmq"]
Status = Literal["imported", "would import", "skipped", "refused"]


class BeatNotInstalledError(TasklaneError):
    """django-celery-beat is not installed, or not in ``INSTALLED_APPS``."""


class RowSkipped(TasklaneError):
    """The row has nothing left to import (it ran, it expired, or Tasklane needs no such task)."""


class RowRefused(TasklaneError):
    """The row needs something Tasklane does not have; :attr:`reasons` says what."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


@dataclass(frozen=True)
class BeatRow:
    """The fields of one ``PeriodicTask`` the import reads; date-times are aware."""

    pk: int
    name: str
    task: str
    interval: tuple[int, str] | None = None  # (every, period), e.g. (5, "minutes")
    crontab: dict[str, str] | None = None  # the five fields and "timezone"
    # DJANGO_CELERY_BEAT_TZ_AWARE: when False, a crontab ran in Celery's time zone, not its own.
    crontab_tz_aware: bool = True
    clocked: datetime | None = None
    solar: str | None = None  # the event, e.g. "sunrise"
    args: str | None = "[]"
    kwargs: str | None = "{}"
    queue: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    headers: str | None = "{}"
    priority: int | None = None
    expires: datetime | None = None
    expire_seconds: int | None = None
    one_off: bool = False
    start_time: datetime | None = None
    enabled: bool = True
    description: str = ""
    total_run_count: int = 0
    date_changed: datetime | None = None


@dataclass(frozen=True)
class RowReport:
    """What became of one row: its status, its Tasklane name and the reason or a summary."""

    row: BeatRow
    name: str
    status: Status
    detail: str
    entry: ScheduleEntry | None = None


# ---------------------------------------------------------------------------- reading


def read_rows(using: str | None = None) -> list[BeatRow]:
    """Every ``PeriodicTask`` of the database, by name.

    Raises:
        BeatNotInstalledError: django-celery-beat cannot be imported or is not an installed app.
    """
    models = _beat_models()
    tasks = models.PeriodicTask.objects.using(using).select_related(
        "interval", "crontab", "clocked", "solar"
    )
    return [_row(task) for task in tasks.order_by("name")]


def disable_rows(pks: Sequence[int], using: str | None = None) -> int:
    """Disable these ``PeriodicTask`` rows, so django-celery-beat stops firing them too."""
    from django.db import router, transaction

    models = _beat_models()
    database = using or router.db_for_write(models.PeriodicTask)
    with transaction.atomic(using=database):
        count: int = (
            models.PeriodicTask.objects.using(database)
            .filter(pk__in=pks, enabled=True)
            .update(enabled=False)
        )
        # update() sends no signal: mark the change as the model's save() would, so a running
        # django-celery-beat scheduler reloads its rows.
        models.PeriodicTasks.objects.using(database).update_or_create(
            ident=1, defaults={"last_update": models.now()}
        )
    return count


@dataclass(frozen=True)
class _Models:
    PeriodicTask: Any
    PeriodicTasks: Any
    now: Callable[[], datetime]


def _beat_models() -> _Models:
    # Imported here: a project without django-celery-beat loads this module (and the command's
    # help) without it, and django-celery-beat's models load only once Django's apps are ready.
    from django.apps import apps

    try:
        import django_celery_beat  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise BeatNotInstalledError(
            "django-celery-beat is not installed: nothing to import from "
            "(pip install django-celery-beat to read its tables)"
        ) from None
    if not apps.is_installed("django_celery_beat"):
        raise BeatNotInstalledError(
            "django_celery_beat is not in INSTALLED_APPS: add it to read its tables"
        )
    from django_celery_beat.models import (  # type: ignore[import-untyped]
        PeriodicTask,
        PeriodicTasks,
    )
    from django_celery_beat.utils import now  # type: ignore[import-untyped]

    return _Models(PeriodicTask, PeriodicTasks, now)


def _row(task: Any) -> BeatRow:
    from django.conf import settings

    crontab = None
    if task.crontab is not None:
        crontab = {field: str(getattr(task.crontab, field)) for field in _CRON_FIELDS}
        crontab["timezone"] = str(task.crontab.timezone)
    return BeatRow(
        pk=task.pk,
        name=task.name,
        task=task.task,
        interval=(task.interval.every, task.interval.period) if task.interval else None,
        crontab=crontab,
        crontab_tz_aware=getattr(settings, "DJANGO_CELERY_BEAT_TZ_AWARE", True),
        clocked=_aware(task.clocked.clocked_time) if task.clocked else None,
        solar=task.solar.event if task.solar else None,
        args=task.args,
        kwargs=task.kwargs,
        queue=task.queue,
        exchange=task.exchange,
        routing_key=task.routing_key,
        headers=task.headers,
        priority=task.priority,
        expires=_aware(task.expires),
        expire_seconds=task.expire_seconds,
        one_off=task.one_off,
        start_time=_aware(task.start_time),
        enabled=task.enabled,
        description=task.description or "",
        total_run_count=task.total_run_count,
        date_changed=_aware(task.date_changed),
    )


def _aware(value: datetime | None) -> datetime | None:
    # With USE_TZ = False Django hands out naive wall-clock times of TIME_ZONE.
    from django.utils import timezone

    if value is None or timezone.is_aware(value):
        return value
    return timezone.make_aware(value)


# ---------------------------------------------------------------------------- names


def entry_name(name: str) -> str:
    """The Tasklane name of a row: its own when Tasklane accepts it, else a slug and a hash.

    The hash (of the whole original name) keeps two names that slug alike ("a b", "a/b") apart
    and gives a row the same entry on every run.
    """
    if re.fullmatch(ENTRY_NAME_PATTERN, name):
        return name
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_.:-]+", "-", plain).strip("-_.:")[:191].rstrip("-_.:")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{slug or 'beat'}-{digest}"


# ---------------------------------------------------------------------------- conversion


def convert(
    row: BeatRow,
    *,
    registry: ContractRegistry,
    now: datetime,
    celery_broker: CeleryBroker | None = None,
) -> ScheduleEntry:
    """The entry ``row`` becomes, its payload validated against its contract.

    Args:
        row: the ``PeriodicTask``.
        registry: the contracts a task name must be one of.
        now: the moment one-offs and expiries are judged at.
        celery_broker: the broker django-celery-beat's Celery used, which says how to read a
            row's ``priority`` (rows with one are refused without it).

    Raises:
        RowSkipped: nothing is left to import.
        RowRefused: Tasklane cannot express the row; every reason is given.
    """
    if row.task == BACKEND_CLEANUP:
        raise RowSkipped(
            "Celery's own result cleanup: Tasklane's Redis result backend expires results "
            "itself (TASKLANE_RESULT_EXPIRES)"
        )
    reasons: list[str] = []
    schedule, start_at, expires_at = _schedule(row, now, reasons)  # may skip
    contract = registry[row.task] if row.task in registry else None
    if contract is None:
        reasons.append(
            f"task {row.task!r} has no contract in the registry: a task of your own becomes a "
            "contract and a service first (docs/contracts.md#adding-a-contract)"
        )
    payload = _payload(row, reasons)
    reasons += _options(row, contract.queue if contract else None)
    priority = _priority(row.priority, celery_broker, reasons)
    if contract is not None and payload is not None:
        try:
            payload = validate_payload(contract, payload).model_dump(mode="json")
        except PayloadValidationError as exc:
            where = "; ".join(f"{_kwargs_field(p.location)}: {p.message}" for p in exc.problems)
            reasons.append(f"kwargs break the contract {row.task}: {where}")
    if reasons or schedule is None or payload is None:
        raise RowRefused(reasons)
    try:
        entry = ScheduleEntry(
            name=entry_name(row.name),
            task=row.task,
            payload=payload,
            schedule=schedule,
            enabled=row.enabled,
            start_at=start_at,
            expires_at=expires_at,
            # 0 is no expiry in django-celery-beat, as its scheduler reads the field.
            expires_after=float(row.expire_seconds) if row.expire_seconds else None,
            priority=priority,
            description=row.description,
            source="api",
        )
    except ValidationError as exc:
        raise RowRefused([_pydantic(exc)]) from None
    # What Schedules.add refuses, found here too, so that a dry run finds it.
    problem = entry.never_fires(now) or entry.empty_window()
    if problem is not None:
        raise RowRefused([": ".join(problem)])
    return entry


Schedule = IntervalSchedule | CrontabSchedule | ClockedSchedule
_Timing = tuple[Schedule | None, datetime | None, datetime | None]


def _schedule(row: BeatRow, now: datetime, reasons: list[str]) -> _Timing:
    """The schedule, start and expiry of ``row``; skips what will never run again."""
    kinds = [
        kind
        for kind, value in (
            ("interval", row.interval),
            ("crontab", row.crontab),
            ("clocked", row.clocked),
            ("solar", row.solar),
        )
        if value is not None
    ]
    if len(kinds) != 1:
        reasons.append("several schedules: " + ", ".join(kinds) if kinds else "no schedule")
        return None, None, None
    if row.solar is not None:
        reasons.append(
            f"solar schedule ({row.solar}): Tasklane has interval, crontab and clocked schedules, "
            "no sunrise or sunset events"
        )
        return None, None, None
    recurring = _recurring(row, reasons)
    if row.one_off or row.clocked is not None:
        return _one_off(row, recurring, now, reasons), None, row.expires
    if row.expires is not None and row.expires <= now:
        raise RowSkipped(f"expired at {_when(row.expires)}: django-celery-beat runs it no more")
    if row.start_time and row.expires and row.start_time >= row.expires:
        raise RowSkipped(
            f"starts ({_when(row.start_time)}) after it expires ({_when(row.expires)}): "
            "it never runs"
        )
    return recurring, row.start_time, row.expires


def _recurring(row: BeatRow, reasons: list[str]) -> IntervalSchedule | CrontabSchedule | None:
    if row.interval is not None:
        return _interval(*row.interval, reasons=reasons)
    if row.crontab is None:
        return None
    if not row.crontab_tz_aware:
        reasons.append(
            "DJANGO_CELERY_BEAT_TZ_AWARE is False: django-celery-beat ran this crontab in "
            f"Celery's time zone, not in its own ({row.crontab['timezone']}); add it by hand"
        )
        return None
    return _crontab(row.crontab, reasons)


def _interval(every: int, period: str, *, reasons: list[str]) -> IntervalSchedule | None:
    try:
        seconds = timedelta(**{period: every}).total_seconds()
    except (TypeError, OverflowError):
        reasons.append(f"interval of {every} {period}: not a period django-celery-beat has")
        return None
    if 0 < seconds < MIN_INTERVAL:
        reasons.append(
            f"interval of {every} {period} ({seconds:g} s): under a second, and Beat fires an "
            "entry at most once per tick (1 s)"
        )
        return None
    try:
        return IntervalSchedule(every=seconds)
    except ValidationError as exc:
        reasons.append(f"interval of {every} {period}: {_pydantic(exc)}")
        return None


def _crontab(fields: dict[str, str], reasons: list[str]) -> CrontabSchedule | None:
    # Celery's parser ignores the spaces django-celery-beat's admin lets into a field ("0, 30").
    values = {field: "".join(fields[field].split()) or "*" for field in _CRON_FIELDS}
    try:
        schedule = CrontabSchedule(**values, timezone=fields["timezone"])
    except ValidationError as exc:
        reasons.append(f"crontab: {_pydantic(exc)}")
        return None
    parsed = cron.parse_crontab(schedule)
    if parsed.dom_restricted and parsed.dow_restricted:
        reasons.append(
            f"crontab restricts both day_of_month ({values['day_of_month']}) and day_of_week "
            f"({values['day_of_week']}): Celery fires when both match, Tasklane (as cron) when "
            "either does"
        )
        return None
    return schedule


def _one_off(
    row: BeatRow,
    recurring: IntervalSchedule | CrontabSchedule | None,
    now: datetime,
    reasons: list[str],
) -> ClockedSchedule | None:
    """The one run of a one-off (or clocked) row, as a clocked schedule; or skip or refuse it.

    django-celery-beat runs a one-off once and disables it; its run is the clocked time (not
    before ``start_time``), else the first slot of its interval or crontab from ``start_time``,
    else from the row's last change.
    """
    if row.enabled and row.total_run_count > 0:
        raise RowSkipped(
            f"one-off that ran already ({row.total_run_count} run(s)): django-celery-beat "
            "disables it at its next check"
        )
    if row.clocked is not None:
        moment = max(row.clocked, row.start_time) if row.start_time else row.clocked
    elif isinstance(recurring, IntervalSchedule):
        moment = row.start_time or (row.date_changed or now) + timedelta(seconds=recurring.every)
    elif isinstance(recurring, CrontabSchedule):
        after = row.start_time - timedelta(microseconds=1) if row.start_time else row.date_changed
        moment = cron.next_fire(recurring, after or now)
    else:  # its interval or crontab was refused
        return None
    if row.expires is not None and row.expires <= moment:
        raise RowSkipped(
            f"one-off at {_when(moment)} expires before it ({_when(row.expires)}): it never runs"
        )
    if moment <= now:
        if not row.enabled:
            raise RowSkipped(
                f"disabled one-off whose time ({_when(moment)}) has passed: django-celery-beat "
                "disables a one-off once it ran"
            )
        reasons.append(
            f"one-off due at {_when(moment)} has not run: a one-off in the past cannot be "
            "scheduled; run its task by hand or give the row a later time"
        )
        return None
    return ClockedSchedule(at=moment)


def _payload(row: BeatRow, reasons: list[str]) -> dict[str, Any] | None:
    args = _json(row.args, "[]", "args", reasons)
    if args is not None and not isinstance(args, list):
        reasons.append(f"args is not a JSON list: {_short(row.args)}")
    elif args:
        reasons.append(
            f"positional args {_short(row.args)}: a contract's payload is keyword arguments "
            "(kwargs)"
        )
    kwargs = _json(row.kwargs, "{}", "kwargs", reasons)
    if kwargs is not None and not isinstance(kwargs, dict):
        reasons.append(f"kwargs is not a JSON object: {_short(row.kwargs)}")
        return None
    return kwargs


def _options(row: BeatRow, contract_queue: str | None) -> list[str]:
    """Reasons for the routing options of ``row`` that Tasklane has no per-entry equivalent for."""
    reasons: list[str] = []
    # Naming the contract's own queue asks for nothing Tasklane does not do anyway.
    if row.queue and row.queue != contract_queue:
        where = f" ({contract_queue})" if contract_queue else ""
        reasons.append(f"queue {row.queue!r}: Tasklane sends a contract to its own queue{where}")
    if row.exchange:
        reasons.append(f"exchange {row.exchange!r}: Tasklane routes by contract, not per entry")
    if row.routing_key:
        reasons.append(
            f"routing_key {row.routing_key!r}: Tasklane routes by contract, not per entry"
        )
    headers = _json(row.headers, "{}", "headers", reasons)
    if headers:
        reasons.append(
            f"headers {_short(row.headers)}: Tasklane sets a message's headers itself, "
            "not per entry"
        )
    return reasons


def _priority(priority: int | None, broker: CeleryBroker | None, reasons: list[str]) -> int | None:
    """Tasklane's priority (0..9, 9 most urgent) for a row's Celery message priority."""
    if priority is None:
        return None
    if not 0 <= priority <= 9:
        reasons.append(f"priority {priority}: Tasklane's priorities are 0..9")
        return None
    if broker is None:
        reasons.append(
            f"priority {priority}: Celery sent it as is, most urgent 9 on RabbitMQ but 0 on "
            "Redis; say which broker it used with --celery-broker"
        )
        return None
    return priority if broker == "rabbitmq" else 9 - priority


def _json(text: str | None, empty: str, field: str, reasons: list[str]) -> Any:
    try:
        return json.loads(text or empty)
    except ValueError as exc:
        reasons.append(f"{field} is not valid JSON ({exc}): {_short(text)}")
        return None


def _kwargs_field(location: tuple[str | int, ...]) -> str:
    return ".".join(["kwargs", *map(str, location)])


def _pydantic(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        field = ".".join(map(str, err["loc"]))
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


def _short(text: str | None, limit: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def describe(entry: ScheduleEntry) -> str:
    """The entry in a few words, for the import's report."""
    schedule = entry.schedule
    if isinstance(schedule, IntervalSchedule):
        text = f"interval every {schedule.every:g} s"
    elif isinstance(schedule, CrontabSchedule):
        fields = " ".join(getattr(schedule, field) for field in _CRON_FIELDS)
        text = f'crontab "{fields}" {schedule.timezone}'
    else:
        text = f"clocked at {_when(schedule.at)}"
    if entry.start_at is not None:
        text += f", from {_when(entry.start_at)}"
    if entry.expires_at is not None:
        text += f", until {_when(entry.expires_at)}"
    if entry.expires_after is not None:
        text += f", firings expire after {entry.expires_after:g} s"
    if entry.priority is not None:
        text += f", priority {entry.priority}"
    return text + ("" if entry.enabled else ", disabled")


# ---------------------------------------------------------------------------- importing


def import_rows(
    rows: Sequence[BeatRow],
    schedules: Schedules,
    *,
    now: datetime,
    actor: Actor,
    dry_run: bool = False,
    replace: bool = False,
    celery_broker: CeleryBroker | None = None,
) -> list[RowReport]:
    """Add the entry of every row that converts; one report per row, in the rows' order.

    With ``dry_run`` the store is read (for name clashes), never written.
    """
    taken = {view.entry.name: view.entry.source for view in schedules.list()}
    reports: list[RowReport] = []
    for row in rows:
        name = entry_name(row.name)
        try:
            entry = convert(
                row, registry=schedules.store.registry, now=now, celery_broker=celery_broker
            )
        except RowSkipped as exc:
            reports.append(RowReport(row, name, "skipped", str(exc)))
            continue
        except RowRefused as exc:
            reports.append(RowReport(row, name, "refused", str(exc)))
            continue
        clash = _clash(name, taken.get(name), replace)
        if clash:
            reports.append(RowReport(row, name, "refused", clash, entry))
        elif dry_run:
            reports.append(RowReport(row, name, "would import", describe(entry), entry))
        else:
            reports.append(_add(row, entry, schedules, actor, replace))
    return reports


def _clash(name: str, source: str | None, replace: bool) -> str | None:
    if source is None or (replace and source == "api"):
        return None
    if source != "api":
        return f"name {name!r} is taken by an entry managed by {source}"
    return f"name {name!r} is taken by an existing Tasklane entry (--replace overwrites it)"


def _add(
    row: BeatRow, entry: ScheduleEntry, schedules: Schedules, actor: Actor, replace: bool
) -> RowReport:
    try:
        schedules.add(entry, replace=replace, actor=actor)
    except TasklaneError as exc:  # the store's own checks: a name taken meanwhile, a one-off due
        return RowReport(row, entry.name, "refused", one_line(exc), entry)
    return RowReport(row, entry.name, "imported", describe(entry), entry)
