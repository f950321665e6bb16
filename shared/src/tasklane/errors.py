"""Exceptions shared by publishers and workers.

Worker code signals intent with two families: :class:`TransientError` (the contract's retry
policy applies) and :class:`PermanentError` (dead-lettered at once, never retried).
"""

from __future__ import annotations


class TasklaneError(Exception):
    """Base class of every Tasklane error."""


class SettingsError(TasklaneError):
    """The configuration is invalid or inconsistent."""


class UnknownContractError(TasklaneError, KeyError):
    """No contract is registered under the given task name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown task contract {self.name!r}"


class PayloadValidationError(TasklaneError, ValueError):
    """A payload does not satisfy its contract; the message names the offending fields."""

    def __init__(self, task: str, errors: list[str]) -> None:
        self.task = task
        self.errors = errors
        super().__init__(f"invalid payload for {task}: " + "; ".join(errors))


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
