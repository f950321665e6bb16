"""The schedule list: filters and search over the entries Beat's store holds, as the admin shows.

Entries are filtered in memory on their own fields (read in one round trip); state and next run
are read only for the page shown (``PER_PAGE``), so 10,000 entries list quickly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from tasklane.beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    Schedule,
    ScheduleEntry,
)

#: Entries on one page of the list.
PER_PAGE = 100
#: The search parameter, as the admin names it.
SEARCH = "q"
#: The page parameter, as the admin names it.
PAGE = "p"

KINDS = (("interval", "Interval"), ("crontab", "Crontab"), ("clocked", "One-off"))
SOURCES = (("api", "Runtime (admin, CLI, API)"), ("file", "Schedule file"), ("code", "Code"))


@dataclass(frozen=True)
class Choice:
    """One link of a filter: its label, its query string, and whether it is applied now."""

    display: str
    query_string: str
    selected: bool


@dataclass(frozen=True)
class ListFilter:
    """A filter in the list's side bar (``admin/filter.html`` reads ``title`` and ``choices``)."""

    title: str
    parameter: str
    choices: list[Choice]


@dataclass(frozen=True)
class Query:
    """What the list is asked for: the search and the filters (the query string's parameters)."""

    params: dict[str, str]

    FILTERS = ("enabled", "kind", "task", "source")

    @classmethod
    def of(cls, get: Mapping[str, str]) -> Query:
        """The known parameters of a request's query string (unknown ones are dropped)."""
        known = (SEARCH, *cls.FILTERS)
        return cls({key: get[key] for key in known if get.get(key)})

    @property
    def search(self) -> str:
        return self.params.get(SEARCH, "").strip()

    @property
    def has_filters(self) -> bool:
        return any(key in self.params for key in self.FILTERS)

    def matches(self, entry: ScheduleEntry) -> bool:
        """Whether ``entry`` passes every filter and the search."""
        wanted = {
            "enabled": "1" if entry.enabled else "0",
            "kind": entry.schedule.kind,
            "task": entry.task,
            "source": entry.source,
        }
        if any(self.params.get(key, value) != value for key, value in wanted.items()):
            return False
        term = self.search.casefold()
        return not term or any(
            term in text.casefold() for text in (entry.name, entry.task, entry.description)
        )

    def apply(self, entries: Sequence[ScheduleEntry]) -> list[ScheduleEntry]:
        return [entry for entry in entries if self.matches(entry)]

    def link(self, **changes: str | None) -> str:
        """The query string with ``changes`` applied (None removes a parameter); the page
        number is never kept, so a changed filter starts on the first page."""
        params = {**self.params, **changes}
        return "?" + urlencode({key: value for key, value in params.items() if value is not None})

    def without_filters(self) -> str:
        return self.link(**dict.fromkeys(self.FILTERS))

    def filters(self, entries: Sequence[ScheduleEntry]) -> list[ListFilter]:
        """The side bar: enabled, kind, contract (those the entries name), source."""
        tasks = sorted({entry.task for entry in entries})
        options: list[tuple[str, str, Sequence[tuple[str, str]]]] = [
            ("enabled", "enabled", (("1", "Yes"), ("0", "No"))),
            ("kind", "kind", KINDS),
            ("contract", "task", [(task, task) for task in tasks]),
            ("source", "source", SOURCES),
        ]
        return [self._filter(title, key, values) for title, key, values in options]

    def _filter(self, title: str, key: str, values: Sequence[tuple[str, str]]) -> ListFilter:
        current = self.params.get(key)
        choices = [Choice("All", self.link(**{key: None}), current is None)]
        choices += [
            Choice(label, self.link(**{key: value}), current == value) for value, label in values
        ]
        return ListFilter(title, key, choices)


def summary(schedule: Schedule) -> str:
    """The schedule in a few words: ``every 30 s``, ``0 3 * * * (Europe/Berlin)``, ``at …``."""
    if isinstance(schedule, IntervalSchedule):
        return f"every {_seconds(schedule.every)}"
    if isinstance(schedule, CrontabSchedule):
        fields = (
            schedule.minute,
            schedule.hour,
            schedule.day_of_month,
            schedule.month_of_year,
            schedule.day_of_week,
        )
        return f"{' '.join(fields)} ({schedule.timezone})"
    assert isinstance(schedule, ClockedSchedule)
    return f"at {schedule.at.isoformat(sep=' ')}"


def _seconds(value: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)} {unit}"
    return f"{value:g} s"
