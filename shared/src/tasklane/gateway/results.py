"""A task's state as ``GET /v1/tasks/{id}`` shows it: read from the result backend off the loop.

The worker records a final failure's exception in the result backend and dead-letters the
message with a reason derived from that exception's class (:func:`tasklane.worker.task.reason_for`);
the same function names the reason here. Design: docs/gateway.md#task-status.
"""

from __future__ import annotations

import importlib
import sys
from functools import cache
from typing import Any

from pydantic import ValidationError

from tasklane.contracts import ContractRegistry
from tasklane.publish import ResultReader

#: Top-level packages whose exception classes the gateway may import to name a reason: its own
#: and Celery's; the services' are added from the registry. Anything else stays unresolved.
_TRUSTED_PACKAGES = frozenset({"tasklane", "billiard", "celery"})


class TaskStates:
    """Reads results through one :class:`~tasklane.publish.ResultReader` (thread-safe)."""

    def __init__(self, reader: ResultReader, registry: ContractRegistry) -> None:
        self._reader = reader
        self._registry = registry
        self._trusted = _TRUSTED_PACKAGES | frozenset(registry.services())

    def read(self, task_id: str) -> dict[str, Any]:
        """The backend's raw record of ``task_id`` (``status`` PENDING when it knows nothing).

        Blocking: call it from a thread. The exception of a failure is left as Celery stored
        it (``exc_type``, ``exc_module``, ``exc_message``), never rebuilt from a module name.
        """
        backend = self._reader.result(task_id).backend
        raw = backend.get(backend.get_key_for_task(task_id))
        if raw is None:
            return {"status": "PENDING", "result": None}
        meta: dict[str, Any] = backend.decode(raw)
        return meta

    def view(self, task_id: str, task: str, meta: dict[str, Any]) -> dict[str, Any]:
        """The status document of a task of contract ``task`` from its backend record."""
        state = str(meta.get("status", "PENDING"))
        value = meta.get("result")
        result: Any = None
        error: dict[str, str] | None = None
        reason: str | None = None
        if state == "SUCCESS":
            result = value
            try:
                result = self._registry[task].result.model_validate(value).model_dump(mode="json")
            except ValidationError:
                pass  # shown as stored: the worker and this gateway disagree on the contract
        elif state == "FAILURE" and isinstance(value, dict):
            error = {"type": str(value.get("exc_type", "")), "message": _message(value)}
            reason = self.dead_letter_reason(value)
        return {
            "task_id": task_id,
            "task": task,
            "state": state,
            "result": result,
            "error": error,
            "dead_letter_reason": reason,
        }

    def dead_letter_reason(self, stored: dict[str, Any]) -> str:
        """The reason the worker dead-lettered a task that failed with ``stored``'s exception."""
        from tasklane.worker.task import reason_for

        cls = _exception_class(
            str(stored.get("exc_module") or ""), str(stored.get("exc_type") or ""), self._trusted
        )
        # An instance without __init__: reason_for looks at the class alone.
        exc = cls.__new__(cls)
        return reason_for(exc)


def _message(stored: dict[str, Any]) -> str:
    args = stored.get("exc_message")
    if isinstance(args, list | tuple):
        return " ".join(str(arg) for arg in args)
    return "" if args is None else str(args)


@cache
def _exception_class(module: str, name: str, trusted: frozenset[str]) -> type[BaseException]:
    """The class Celery named, when its module is trusted and importable; else Exception."""
    if module.split(".")[0] in trusted and name:
        try:
            found: Any = sys.modules.get(module) or importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            return Exception
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
    return Exception
