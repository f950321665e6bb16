"""The media service's own metrics: items processed, bytes in and out, limits hit.

Labels come from fixed sets: the task name, ``ok``/``refused``/``failed``, and the limit error's
class name (``ImageTooLargeError``, ``VideoTooLongError``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tasklane.errors import PermanentError
from tasklane.observability.metrics import service_counter


def _items(task: str, outcome: str) -> None:
    service_counter(
        "tasklane_media_items", "Media tasks finished, by outcome.", ("task", "outcome")
    ).labels(task, outcome).inc()


def bytes_moved(direction: str, count: int) -> None:
    """Bytes read from a source (``in``) or written to the store (``out``)."""
    service_counter("tasklane_media_bytes", "Media bytes read and written.", ("direction",)).labels(
        direction
    ).inc(count)


@contextmanager
def measured(task: str) -> Iterator[None]:
    """Count the task's outcome, and which limit refused its input if one did."""
    try:
        yield
    except PermanentError as exc:
        _items(task, "refused")
        service_counter(
            "tasklane_media_limits", "Inputs refused by a limit, by limit.", ("limit",)
        ).labels(type(exc).__name__).inc()
        raise
    except BaseException:
        _items(task, "failed")
        raise
    _items(task, "ok")
