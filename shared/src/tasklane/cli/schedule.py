"""``tasklane schedule``: add, list, show, enable, disable, remove and run schedule entries.

Everything goes through :class:`~tasklane.beat.client.Schedules`, as the HTTP API does, so an
entry is checked against its task's contract when it is added, not when Beat fires it.

This module does not import :mod:`tasklane.cli.main` (which registers ``schedule_app``): the import
would be circular, so its error handling mirrors the one there instead of reusing it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from rich.table import Table
from rich.text import Text

from tasklane.beat.client import default_actor
from tasklane.beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    EntryView,
    IntervalSchedule,
    Schedule,
    ScheduleEntry,
)
from tasklane.cli.backends import open_schedules
from tasklane.cli.errors import Commands, parse_json_object
from tasklane.cli.errors import console as _console
from tasklane.cli.tables import (
    AsJson,
    Wide,
    compact_table,
    compact_time,
    print_json,
    print_wide,
)
from tasklane.errors import TasklaneError

ModelT = TypeVar("ModelT", bound=BaseModel)


#: The command-line spelling of each model field, so errors name what the user typed.
_OPTIONS = {
    "name": "NAME",
    "task": "--task",
    "payload": "--json",
    "every": "--every",
    "at": "--at",
    "timezone": "--tz",
    "start_at": "--start",
    "expires_at": "--expires",
    "description": "--description",
    "priority": "--priority",
    "expires_after": "--expires-after",
}
#: Fields ``schedule edit --clear`` may unset.
_CLEARABLE = ("start_at", "expires_at", "priority", "expires_after")
_CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

schedule_app = Commands(
    help="Manage periodic tasks: add, edit, list, show, enable, disable, remove, run now, "
    "history, audit.",
    no_args_is_help=True,
)


class ScheduleInputError(TasklaneError):
    """A bad option of a ``tasklane schedule`` command (the message names it)."""


# --------------------------------------------------------------------------- building entries


def _model(cls: type[ModelT], option: str, **fields: Any) -> ModelT:
    """``cls(**fields)``, its validation errors reworded to name the command-line options."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        problems = "; ".join(_problem(error, option) for error in exc.errors())
        raise ScheduleInputError(problems) from None


def _problem(error: ErrorDetails, option: str) -> str:
    path = ".".join(str(part) for part in error["loc"])
    where = _OPTIONS.get(path) or (f"{option} {path}" if path else option)
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def _instant(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleInputError(
            f"{option}: {text!r} is not an ISO 8601 date-time, e.g. 2026-12-01T09:00:00+01:00"
        ) from None


def _crontab(line: str, zone: str | None) -> CrontabSchedule:
    fields = line.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ScheduleInputError(
            f"--cron: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {line!r}"
        )
    values = dict(zip(_CRON_FIELDS, fields, strict=True))
    return _model(CrontabSchedule, "--cron", **values, timezone=zone or "UTC")


def _schedule(
    every: float | None, cron: str | None, zone: str | None, at: str | None
) -> IntervalSchedule | CrontabSchedule | ClockedSchedule:
    """The one schedule the options describe."""
    options = (("--every", every), ("--cron", cron), ("--at", at))
    given = [option for option, value in options if value is not None]
    if len(given) != 1:
        raise ScheduleInputError(
            f"give exactly one of --every, --cron and --at (got {', '.join(given) or 'none'})"
        )
    if zone is not None and cron is None:
        raise ScheduleInputError("--tz applies to --cron only (give --at an offset instead)")
    if every is not None:
        return _model(IntervalSchedule, "--every", every=every)
    if cron is not None:
        return _crontab(cron, zone)
    return _model(ClockedSchedule, "--at", at=_instant(at, "--at"))


# --------------------------------------------------------------------------- showing entries


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _summary(schedule: Schedule) -> str:
    """One line a person reads: ``every 5m``, ``cron 0 3 * * * Europe/Berlin``, ``once at …``."""
    if isinstance(schedule, IntervalSchedule):
        return f"every {_duration(schedule.every)}"
    if isinstance(schedule, CrontabSchedule):
        fields = " ".join(getattr(schedule, name) for name in _CRON_FIELDS)
        return f"cron {fields} {schedule.timezone}"
    return f"once at {_when(schedule.at)}"


def _next(view: EntryView) -> str:
    return f"next run {_when(view.next_run_at)}" if view.next_run_at else "no next run"


# --------------------------------------------------------------------------- commands


@schedule_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Entry name: letters, digits, _ . : -")],
    task: Annotated[str, typer.Option("--task", help="Task name, e.g. notifier.im.send.")],
    payload: Annotated[str, typer.Option("--json", help="The payload as one JSON object.")],
    every: Annotated[
        float | None, typer.Option("--every", help="Run every this many seconds.")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help='Crontab fields: "minute hour dom month dow".')
    ] = None,
    zone: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone of --cron (default UTC).")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Run once at this ISO 8601 time (with offset).")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--start", help="No run before this ISO 8601 time.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="No run after this ISO 8601 time.")
    ] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Add it disabled.")] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an entry of that name.")
    ] = False,
    description: Annotated[str, typer.Option("--description", help="What it is for.")] = "",
    priority: Annotated[
        int | None, typer.Option("--priority", help="0-9, 9 most urgent (default: the task's).")
    ] = None,
    expires_after: Annotated[
        float | None,
        typer.Option("--expires-after", help="Drop a firing not started within these seconds."),
    ] = None,
) -> None:
    """Add an entry, checked against its task's contract now rather than when it fires."""
    entry = _model(
        ScheduleEntry,
        "NAME",
        name=name,
        task=task,
        payload=parse_json_object(payload, "--json"),
        schedule=_schedule(every, cron, zone, at),
        enabled=not disabled,
        start_at=_instant(start, "--start"),
        expires_at=_instant(expires, "--expires"),
        description=description,
        priority=priority,
        expires_after=expires_after,
    )
    with open_schedules() as schedules:
        view = schedules.add(entry, replace=replace, actor=default_actor("cli"))
    state = "added" if view.entry.enabled else "added (disabled)"
    _console().print(
        f"{state} {name}: {task} {_summary(view.entry.schedule)}; {_next(view)}", highlight=False
    )


@schedule_app.command("edit")
def edit(
    name: Annotated[str, typer.Argument(help="Entry name.")],
    task: Annotated[str | None, typer.Option("--task", help="New task name.")] = None,
    payload: Annotated[
        str | None, typer.Option("--json", help="New payload, one JSON object (replaces it).")
    ] = None,
    every: Annotated[float | None, typer.Option("--every", help="New interval (s).")] = None,
    cron: Annotated[str | None, typer.Option("--cron", help="New crontab fields.")] = None,
    zone: Annotated[str | None, typer.Option("--tz", help="Time zone of --cron.")] = None,
    at: Annotated[str | None, typer.Option("--at", help="New one-off time (ISO 8601).")] = None,
    start: Annotated[str | None, typer.Option("--start", help="No run before this.")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="No run after this.")] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="What it is for.")
    ] = None,
    priority: Annotated[int | None, typer.Option("--priority", help="0-9.")] = None,
    expires_after: Annotated[
        float | None, typer.Option("--expires-after", help="Seconds a firing may wait.")
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option("--clear", help=f"Unset a field: {', '.join(_CLEARABLE)} (repeatable)."),
    ] = None,
) -> None:
    """Change some fields of an entry, keeping its run count, last run and history."""
    changes: dict[str, Any] = {}
    if any(value is not None for value in (every, cron, at)):
        changes["schedule"] = _schedule(every, cron, zone, at)
    elif zone is not None:
        raise ScheduleInputError("--tz applies to --cron only")
    given = {
        "task": task,
        "payload": None if payload is None else parse_json_object(payload, "--json"),
        "start_at": _instant(start, "--start"),
        "expires_at": _instant(expires, "--expires"),
        "description": description,
        "priority": priority,
        "expires_after": expires_after,
    }
    changes.update({field: value for field, value in given.items() if value is not None})
    for field in clear or []:
        if field not in _CLEARABLE:
            raise ScheduleInputError(f"--clear: {field!r} is not one of {', '.join(_CLEARABLE)}")
        if field in changes:
            raise ScheduleInputError(f"--clear {field}: also given a new value")
        changes[field] = None
    if not changes:
        raise ScheduleInputError("nothing to change: give at least one option")
    with open_schedules() as schedules:
        try:
            view = schedules.edit(name, changes, actor=default_actor("cli"))
        except ValidationError as exc:
            problems = "; ".join(_problem(error, "NAME") for error in exc.errors())
            raise ScheduleInputError(problems) from None
    fields = ", ".join(sorted(changes))
    _console().print(f"changed {name} ({fields}); {_next(view)}", highlight=False)


@schedule_app.command("list")
def list_entries(wide: Wide = False, as_json: AsJson = False) -> None:
    """Show every entry: name, task, schedule, enabled, next run (--wide: runs, problems...)."""
    with open_schedules() as schedules:
        views = schedules.list()
    if as_json:
        print_json({"schedules": [view.model_dump(mode="json") for view in views]})
        return
    if not views:
        _console().print("no schedules")
        return
    console = _console()
    if wide:
        print_wide(console, _wide_table(views))
    else:
        console.print(_compact_table(views))


def _compact_table(views: list[EntryView]) -> Table:
    """The columns an operator needs at 80: problems, when there are any, in red below."""
    table = compact_table("Schedules")
    table.add_column("Name", style="bold", overflow="fold")
    table.add_column("Task", no_wrap=True)
    table.add_column("Schedule")
    table.add_column("On")
    table.add_column("Next run (UTC)", no_wrap=True)
    for view in views:
        entry = view.entry
        name = Text(entry.name)
        if view.problem:
            name.append(f"\n{view.problem}", style="red")
        table.add_row(
            name,
            entry.task,
            _summary(entry.schedule),
            "yes" if entry.enabled else "no",
            compact_time(view.next_run_at),
        )
    return table


def _wide_table(views: list[EntryView]) -> Table:
    table = Table(title="Schedules")
    table.add_column("Name", style="bold", no_wrap=True)
    table.add_column("Task", no_wrap=True)
    table.add_column("Schedule")
    table.add_column("Enabled")
    table.add_column("Source")
    table.add_column("Runs", justify="right")
    table.add_column("Last run", no_wrap=True)
    table.add_column("Next run", no_wrap=True)
    table.add_column("Problem")
    for view in views:
        entry = view.entry
        table.add_row(
            entry.name,
            entry.task,
            _summary(entry.schedule),
            "yes" if entry.enabled else "no",
            entry.source,
            str(view.state.total_run_count),
            _when(view.state.last_run_at),
            _when(view.next_run_at),
            Text(view.problem or "-", style="red" if view.problem else ""),
        )
    return table


@schedule_app.command("show")
def show(name: Annotated[str, typer.Argument(help="Entry name.")]) -> None:
    """Print one entry, its state and next run as JSON."""
    with open_schedules() as schedules:
        view = schedules.show(name)
    _console().print_json(view.model_dump_json())


@schedule_app.command("enable")
def enable(name: Annotated[str, typer.Argument(help="Entry name.")]) -> None:
    """Let an entry fire again, from its next slot (missed slots are not made up)."""
    with open_schedules() as schedules:
        view = schedules.enable(name, actor=default_actor("cli"))
    _console().print(f"enabled {name}; {_next(view)}", highlight=False)


@schedule_app.command("disable")
def disable(name: Annotated[str, typer.Argument(help="Entry name.")]) -> None:
    """Stop an entry firing, keeping it and its history."""
    with open_schedules() as schedules:
        schedules.disable(name, actor=default_actor("cli"))
    _console().print(f"disabled {name}", highlight=False)


@schedule_app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="Entry name.")]) -> None:
    """Delete an entry added at run time (file- and code-managed ones are removed there)."""
    with open_schedules() as schedules:
        schedules.remove(name, actor=default_actor("cli"))
    _console().print(f"removed {name}", highlight=False)


@schedule_app.command("run-now")
def run_now(name: Annotated[str, typer.Argument(help="Entry name.")]) -> None:
    """Publish the entry's task now, outside its schedule, and print the task id."""
    with open_schedules() as schedules:
        task_id = schedules.run_now(name, actor=default_actor("cli"))
    _console().print(f"task id: {task_id}", highlight=False)


@schedule_app.command("history")
def history(
    name: Annotated[str, typer.Argument(help="Entry name.")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=50, help="Firings shown.")] = 20,
) -> None:
    """Show the entry's last firings: slot, task id and what became of the task."""
    with open_schedules() as schedules:
        outcomes = schedules.history(name, limit)
    if not outcomes:
        _console().print(f"{name} has not fired yet", highlight=False)
        return
    table = Table(title=f"Firings of {name}")
    table.add_column("Slot", no_wrap=True)
    table.add_column("Task id", no_wrap=True)
    table.add_column("Outcome")
    for outcome in outcomes:
        firing = outcome.firing
        slot = _when(firing.slot) if firing.slot else f"run now by {firing.actor or '?'}"
        status = outcome.status + (f": {outcome.error}" if outcome.error else "")
        style = "red" if outcome.status == "dead-lettered" else ""
        table.add_row(slot, firing.task_id, Text(status, style=style))
    _console().print(table)


@schedule_app.command("audit")
def audit(
    name: Annotated[str | None, typer.Argument(help="Entry name (all entries if omitted).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Records shown.")] = 50,
) -> None:
    """Show who created, changed, enabled, disabled, ran or deleted entries, and when."""
    with open_schedules() as schedules:
        records = schedules.audit(name, limit)
    if not records:
        _console().print("no audit records")
        return
    table = Table(title="Schedule audit trail")
    table.add_column("When", no_wrap=True)
    table.add_column("Entry")
    table.add_column("Action")
    table.add_column("By")
    table.add_column("Changes")
    for record in records:
        table.add_row(
            _when(record.at),
            record.name,
            record.action,
            str(record.actor),
            ", ".join(sorted(record.changes)) or "-",
        )
    _console().print(table)


@schedule_app.command("beats")
def beats() -> None:
    """Show the live Beat processes: when each last ticked and which one holds the lock."""
    with open_schedules() as schedules:
        statuses = schedules.beats()
    if not statuses:
        _console().print("no Beat process is running")
        return
    now = datetime.now(UTC)
    table = Table(title="Beat processes")
    table.add_column("Process", style="bold", no_wrap=True)
    table.add_column("Last tick", justify="right")
    table.add_column("Schedules", justify="right")
    table.add_column("Holds lock")
    table.add_column("Problems")
    for status in statuses:
        age = max(0.0, (now - status.last_tick).total_seconds())
        table.add_row(
            status.process,
            f"{age:.1f}s ago",
            str(status.schedules),
            "yes" if status.holds_lock else "no",
            ", ".join(sorted(status.problems)) or "-",
        )
    _console().print(table)
