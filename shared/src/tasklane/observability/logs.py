"""Log lines of workers and Beat: JSON for machines, or text for people.

Each JSON line carries, besides the message, level, logger and time, the task being run (id,
name, queue, attempt) and the current trace and span ids, so a log line, a metric exemplar and a
trace point at each other. ``TASKLANE_LOG_FORMAT`` picks ``json`` or ``text``; ``auto`` (the
default) writes JSON unless the output is a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s"


class TaskContextFilter(logging.Filter):
    """Adds the running task and the current trace to every record (empty when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update(task_context())
        record.__dict__.update(trace_context())
        return True


def task_context() -> dict[str, Any]:
    """The task this process is running now, if any."""
    from celery import current_task

    task = current_task
    request = getattr(task, "request", None) if task else None
    if request is None or not getattr(request, "id", None):
        return {}
    info = getattr(request, "delivery_info", None) or {}
    return {
        "task_id": request.id,
        "task_name": task.name,
        "queue": info.get("routing_key") or getattr(task, "queue", None),
        "attempt": int(getattr(request, "retries", 0) or 0) + 1,
    }


def trace_context() -> dict[str, str]:
    """The current span's trace and span ids (hex), sampled or not; none outside a trace."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def formatter(kind: str) -> logging.Formatter:
    """The formatter of ``kind`` (json, text or auto)."""
    if kind == "auto":
        kind = "text" if sys.stderr.isatty() else "json"
    if kind == "json":
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
        )
    return logging.Formatter(TEXT_FORMAT)


class TaskDataNotLogged(logging.Filter):
    """Keeps task payloads and results out of Celery's log lines.

    They carry personal data (an email's recipients) into log aggregators that more people read
    than the broker or the result backend; spans already leave them out. Celery has no setting
    for it: its "succeeded" line ends with the result, and its "received" and "succeeded"
    records carry args, kwargs and the result as an extra ``data`` mapping, which JSON lines
    print. The filter drops both, on the handlers, so every Celery logger is covered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from celery.app.trace import LOG_SUCCESS

        if record.msg == LOG_SUCCESS:
            record.msg = _SUCCESS_WITHOUT_RESULT
        data = record.__dict__.get("data")
        if isinstance(data, dict) and not _TASK_DATA.isdisjoint(data):
            record.data = {key: value for key, value in data.items() if key not in _TASK_DATA}
        return True


_SUCCESS_WITHOUT_RESULT = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
_TASK_DATA = frozenset({"args", "kwargs", "return_value"})


def install_logging(kind: str, log_task_data: bool = False) -> None:
    """Format the worker's and Beat's logs as ``kind`` once Celery has set its handlers up.

    Task payloads and results stay out of them unless ``log_task_data``
    (``TASKLANE_LOG_TASK_DATA``).
    """

    def configure(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is None:
            return
        for handler in logger.handlers:
            handler.setFormatter(formatter(kind))
            if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
                handler.addFilter(TaskContextFilter())
            if not log_task_data and not any(
                isinstance(f, TaskDataNotLogged) for f in handler.filters
            ):
                handler.addFilter(TaskDataNotLogged())

    signals.after_setup_logger.connect(configure, weak=False)
    signals.after_setup_task_logger.connect(configure, weak=False)
    # httpx logs every request's full URL at INFO, and webhook URLs carry their secrets
    # (DingTalk's access_token, Slack's path).
    logging.getLogger("httpx").setLevel(logging.WARNING)
