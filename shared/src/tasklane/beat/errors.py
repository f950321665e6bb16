"""What a schedule operation raises; the HTTP API maps each to one status code."""

from __future__ import annotations

from tasklane.errors import TasklaneError


class ScheduleError(TasklaneError):
    """A schedule operation that cannot be done (the message says why): HTTP 409."""


class ScheduleNotFoundError(ScheduleError):
    """No entry of that name: HTTP 404."""


class ScheduleExistsError(ScheduleError):
    """An entry of that name exists already, or it is managed elsewhere: HTTP 409."""


class ScheduleInvalidError(ScheduleError, ValueError):
    """An entry that could never fire, or a value the schedule refuses: HTTP 422.

    Attributes:
        field: the entry's field as a client names it (``expires_at``, ``schedule.at``).
        reason: why, without the field.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
