"""Exceptions shared by publishers and workers.

Worker code signals intent with two families: :class:`TransientError` (the contract's retry
policy applies) and :class:`PermanentError` (dead-lettered at once, never retried).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class TasklaneError(Exception):
    """Base class of every Tasklane error."""


class SettingsError(TasklaneError):
    """The configuration is invalid or inconsistent."""


class BrokerUnavailableError(TasklaneError, ConnectionError):
    """The broker did not take a message within ``TASKLANE_PUBLISH_TIMEOUT`` seconds.

    The publisher retried on a new connection until then. Of a ``publish_many`` call, the first
    :attr:`sent` messages were sent; any later one may or may not have been.
    """

    def __init__(self, broker: str, timeout: float, attempts: int, sent: int, cause: str) -> None:
        self.broker = broker
        self.timeout = timeout
        self.attempts = attempts
        self.sent = sent
        super().__init__(
            f"broker {broker} unavailable: no publish succeeded in {timeout:g}s "
            f"({attempts} attempts; last error: {cause})"
        )


class UnknownContractError(TasklaneError, KeyError):
    """No contract is registered under the given task name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown task contract {self.name!r}"


@dataclass(frozen=True)
class Problem:
    """One rule a payload breaks: where in the payload, and what is wrong there.

    ``location`` is the path into the payload (``("to", 0)``; empty for the payload as a whole);
    ``item`` names the payload among several (``[2]`` of a bulk publish, ``line 3:`` of a file).
    """

    location: tuple[str | int, ...]
    message: str
    item: str | None = None

    @property
    def field(self) -> str:
        """The location dotted, as the CLI and the docs write it: ``to.0``, or ``payload``."""
        return ".".join(str(part) for part in self.location) or "payload"

    def __str__(self) -> str:
        prefix = f"{self.item} " if self.item else ""
        return f"{prefix}{self.field}: {self.message}"


class PayloadValidationError(TasklaneError, ValueError):
    """A payload does not satisfy its contract; :attr:`problems` say where and why.

    :attr:`sent` is 0 but of a ``publish_many`` streamed from an iterator: how many of the first
    tasks had been sent when the invalid payload was reached.
    """

    def __init__(self, task: str, problems: Iterable[Problem], *, sent: int = 0) -> None:
        self.task = task
        self.problems = tuple(problems)
        self.sent = sent
        super().__init__(f"invalid payload for {task}: " + "; ".join(self.errors))

    @property
    def errors(self) -> list[str]:
        """One ``field: message`` line per problem (``to.0: value is not a valid email``)."""
        return [str(problem) for problem in self.problems]


class PayloadTooLargeError(PayloadValidationError):
    """The serialized payload is over the configured size limit."""


class PermanentError(TasklaneError):
    """The task cannot succeed by retrying (bad input, 4xx answer, missing template variable)."""


class TransientError(TasklaneError):
    """The task may succeed later; ``retry_after`` (seconds) overrides the backoff when given."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TaskFailedError(TasklaneError):
    """Raised by :meth:`tasklane.TaskHandle.get` when the task ended in failure."""

    def __init__(self, task_id: str, error_type: str, error: str) -> None:
        self.task_id = task_id
        self.error_type = error_type
        self.error = error
        super().__init__(f"task {task_id} failed: {error_type}: {error}")
