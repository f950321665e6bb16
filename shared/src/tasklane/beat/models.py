"""Periodic task definitions: what to publish, when, and what has happened so far.

An entry names a contract and carries its payload, validated against the contract when the
entry is made, so a bad entry is refused at once instead of failing when it fires. The times an
entry fires are *slots*: for an interval, ``start + k * every``; for a crontab, the wall-clock
times its fields match in its time zone; for a clocked entry, its one date-time. A slot is fired
at most once, whichever Beat process sees it (see :mod:`tasklane.beat.scheduler`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasklane.beat import cron
from tasklane.beat.errors import ScheduleInvalidError
from tasklane.contracts import REGISTRY, ContractRegistry
from tasklane.contracts.validation import validate_payload
from tasklane.settings import TimeZoneName

ENTRY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
Source = Literal["api", "file", "code"]
#: Where a change came from, for the audit trail.
Via = Literal["admin", "cli", "http", "python", "import"]
AuditAction = Literal["created", "changed", "enabled", "disabled", "ran", "deleted"]
FiringStatus = Literal[
    "pending", "started", "retrying", "succeeded", "dead-lettered", "expired", "unknown"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntervalSchedule(_Model):
    """Every ``every`` seconds, from the entry's ``start_at`` (or its creation)."""

    kind: Literal["interval"] = "interval"
    every: float = Field(gt=0, le=366 * 86_400, description="Seconds between two runs.")


class CrontabSchedule(_Model):
    """Cron fields evaluated on the wall clock of ``timezone``."""

    kind: Literal["crontab"] = "crontab"
    minute: str = "*"
    hour: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    day_of_week: str = Field(default="*", description="0-6 or sun-sat; 0 is Sunday.")
    timezone: TimeZoneName = Field(
        default="UTC", description="An IANA time zone, e.g. Europe/Berlin."
    )

    @model_validator(mode="after")
    def _fields_parse(self) -> CrontabSchedule:
        cron.parse_crontab(self)  # the parser owns the field rules
        return self


class ClockedSchedule(_Model):
    """Once, at ``at`` (an aware date-time); the entry disables itself after it fired."""

    kind: Literal["clocked"] = "clocked"
    at: datetime

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone offset, e.g. 2026-12-01T09:00:00+01:00")
        return value


Schedule = Annotated[
    IntervalSchedule | CrontabSchedule | ClockedSchedule, Field(discriminator="kind")
]


class ScheduleEntry(_Model):
    """One periodic (or one-off) publication of a contract's task."""

    name: str = Field(pattern=ENTRY_NAME_PATTERN)
    task: str = Field(description="The contract's task name.")
    payload: dict[str, Any] = Field(default_factory=dict)
    schedule: Schedule
    enabled: bool = True
    start_at: datetime | None = Field(default=None, description="No run before this.")
    expires_at: datetime | None = Field(default=None, description="No run after this.")
    description: str = Field(default="", max_length=500)
    priority: int | None = Field(
        default=None, ge=0, le=9, description="0-9 (9 most urgent); unset: the contract's."
    )
    expires_after: float | None = Field(
        default=None,
        gt=0,
        le=366 * 86_400,
        description="Seconds a firing may wait for a worker; not started by then, it is dropped.",
    )
    source: Source = Field(default="api", description="Who manages it: api, file or code.")
    created_at: datetime | None = None

    @field_validator("start_at", "expires_at", "created_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a time zone offset")
        return value

    def never_fires(self, now: datetime) -> tuple[str, str] | None:
        """``(field, reason)`` if this entry, made or changed at ``now``, could never fire."""
        if self.expires_at is not None and self.expires_at <= now:
            return "expires_at", f"{self.expires_at.isoformat()} is in the past"
        schedule = self.schedule
        if isinstance(schedule, ClockedSchedule) and schedule.at <= now:
            return "schedule.at", f"{schedule.at.isoformat()} is in the past"
        return None

    def validated(self, registry: ContractRegistry = REGISTRY) -> ScheduleEntry:
        """This entry with its payload normalised by its contract.

        Raises:
            ScheduleInvalidError: start, expiry and a one-off's time leave no time to fire.
            UnknownContractError: no contract of that name.
            PayloadValidationError: the payload breaks the contract (the field is named).
        """
        window = self.empty_window()
        if window is not None:
            raise ScheduleInvalidError(*window)
        model = validate_payload(registry[self.task], self.payload)
        return self.model_copy(update={"payload": model.model_dump(mode="json")})

    def empty_window(self) -> tuple[str, str] | None:
        """``(field, reason)`` when no time lies between start, expiry and a one-off's time.

        Checked where entries are made and loaded, not in the model itself: an entry stored
        before this rule still loads, and shows as a problem instead of breaking Beat.
        """
        expires = self.expires_at
        if expires is None:
            return None
        if self.start_at is not None and self.start_at >= expires:
            return "expires_at", f"{expires.isoformat()} is not after start_at"
        if isinstance(self.schedule, ClockedSchedule) and self.schedule.at > expires:
            return "expires_at", f"{expires.isoformat()} is before schedule.at"
        return None


class EntryState(_Model):
    """What has happened to an entry."""

    last_run_at: datetime | None = None
    total_run_count: int = 0
    last_slot: datetime | None = Field(default=None, description="The last slot fired.")


class Actor(_Model):
    """Who made a change, and through which door."""

    via: Via
    who: str = Field(min_length=1, max_length=200)

    def __str__(self) -> str:
        return f"{self.who} ({self.via})"


class AuditRecord(_Model):
    """One change to an entry, as the audit trail keeps it."""

    at: datetime
    name: str
    action: AuditAction
    actor: Actor
    changes: dict[str, Any] = Field(
        default_factory=dict, description='For "changed": {field: {"old": x, "new": y}}.'
    )


class Firing(_Model):
    """One publication of an entry's task: a slot Beat fired, or a run-now."""

    task_id: str
    fired_at: datetime
    slot: datetime | None = Field(default=None, description="None for a run-now.")
    manual: bool = False
    actor: Actor | None = None


class FiringOutcome(_Model):
    """A firing with what became of its task, as the result backend says."""

    firing: Firing
    status: FiringStatus
    error: str | None = None


class EntryView(_Model):
    """An entry as the API, the CLI and Python callers see it."""

    entry: ScheduleEntry
    state: EntryState
    next_run_at: datetime | None
    problem: str | None = Field(
        default=None, description="Why it cannot fire, e.g. its contract no longer exists."
    )


def due_slot(entry: ScheduleEntry, state: EntryState, now: datetime) -> datetime | None:
    """The slot to fire now: the latest one not after ``now`` and after the last one fired.

    Older slots missed while no Beat was running are skipped, not fired in a burst.
    """
    if not entry.enabled:
        return None
    slot = _slot_at_or_before(entry, now)
    if slot is None or slot < _lower_bound(entry):
        return None
    if state.last_slot is not None and slot <= state.last_slot:
        return None
    if entry.expires_at is not None and slot > entry.expires_at:
        return None
    return slot


def next_slot(entry: ScheduleEntry, state: EntryState, now: datetime) -> datetime | None:
    """When the entry fires next (a slot due now counts), or None if it never will."""
    if not entry.enabled:
        return None
    due = due_slot(entry, state, now)
    if due is not None:
        return due
    after = max(now, _lower_bound(entry) - timedelta(microseconds=1))
    if state.last_slot is not None:
        after = max(after, state.last_slot)
    slot = _slot_after(entry, state, after)
    if slot is None or (entry.expires_at is not None and slot > entry.expires_at):
        return None
    return slot


def passed_slot(entry: ScheduleEntry, now: datetime) -> datetime | None:
    """The latest slot at or before ``now`` (None if none): marked fired to skip it unfired."""
    slot = _slot_at_or_before(entry, now)
    if slot is None or slot < _lower_bound(entry):
        return None
    return slot


def slots_between(
    entry: ScheduleEntry, last: datetime | None, slot: datetime, limit: int = 10_000
) -> int:
    """How many slots lie strictly between ``last`` and ``slot`` (missed), at most ``limit``."""
    if last is None or slot <= last:
        return 0
    schedule = entry.schedule
    if isinstance(schedule, IntervalSchedule):
        return max(0, round((slot - last).total_seconds() / schedule.every) - 1)
    if isinstance(schedule, ClockedSchedule):
        return 0
    count, moment = 0, last
    while count < limit:
        moment = cron.next_fire(schedule, moment)
        if moment >= slot:
            return count
        count += 1
    return count


def _lower_bound(entry: ScheduleEntry) -> datetime:
    # Slots before the entry existed (or before its start) are not owed.
    return entry.start_at or entry.created_at or datetime.min.replace(tzinfo=UTC)


def _slot_at_or_before(entry: ScheduleEntry, when: datetime) -> datetime | None:
    schedule = entry.schedule
    if isinstance(schedule, IntervalSchedule):
        anchor = _interval_anchor(entry, schedule)
        if when < anchor:
            return None
        steps = int((when - anchor).total_seconds() // schedule.every)
        return anchor + timedelta(seconds=steps * schedule.every)
    if isinstance(schedule, CrontabSchedule):
        return cron.last_fire(schedule, when)
    return schedule.at if schedule.at <= when else None


def _slot_after(entry: ScheduleEntry, state: EntryState, after: datetime) -> datetime | None:
    schedule = entry.schedule
    if isinstance(schedule, IntervalSchedule):
        anchor = _interval_anchor(entry, schedule)
        if after < anchor:
            return anchor
        steps = int((after - anchor).total_seconds() // schedule.every) + 1
        return anchor + timedelta(seconds=steps * schedule.every)
    if isinstance(schedule, CrontabSchedule):
        return cron.next_fire(schedule, after)
    if state.total_run_count or schedule.at <= after:
        return None
    return schedule.at


def _interval_anchor(entry: ScheduleEntry, schedule: IntervalSchedule) -> datetime:
    # With a start time the first run is at it; otherwise one interval after the entry was made.
    if entry.start_at is not None:
        return entry.start_at
    if entry.created_at is None:
        raise ValueError(f"entry {entry.name!r} has neither start_at nor created_at")
    return entry.created_at + timedelta(seconds=schedule.every)
