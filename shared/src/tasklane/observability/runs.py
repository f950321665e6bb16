"""What a worker process observes of each task run, started and ended by one pair of receivers.

Celery sends ``task_prerun`` and ``task_postrun`` to each receiver in turn, paying per receiver
for the dispatch, and each receiver would read the task's request from Celery's request stack
again. Metrics and task spans are called from one receiver each instead: the request is read
once, and the run's span is handed to the metrics (the runtime's exemplar) rather than looked
up in the context. Design: docs/observability.md#worker-metrics.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery import signals
from opentelemetry.trace import Span


class RunMetrics(Protocol):
    """What records a run's metrics (:class:`tasklane.observability.metrics.TaskRecorder`)."""

    def begin(self, task_id: str, task: Any, request: Any) -> None: ...

    def end(self, task_id: str, task: Any, state: Any, span: Span | None) -> None: ...


class RunSpans(Protocol):
    """What makes a run's span (:class:`tasklane.observability.task_spans.TaskSpans`)."""

    def begin(self, task_id: str, task: Any, request: Any) -> None: ...

    def end(self, task_id: str, task: Any, state: Any) -> None: ...

    def span_of(self, task_id: str) -> Span | None: ...


class RunObservers:
    """The metrics and spans of the task runs of a worker's processes.

    Made with the app; the metrics recorder is set before the pool forks, each process's spans
    once its tracing starts (after the fork under prefork). Metrics go first at both ends: a
    run's queue wait is taken before its span starts, its runtime while its span is current.
    """

    def __init__(self) -> None:
        self.metrics: RunMetrics | None = None
        self.spans: RunSpans | None = None
        self._connected = False

    def connect(self) -> None:
        """Receive the run signals (once, whatever the number of calls)."""
        if not self._connected:
            signals.task_prerun.connect(self.prerun, weak=False)
            signals.task_postrun.connect(self.postrun, weak=False)
            self._connected = True

    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is None or task_id is None:
            return
        request = task.request  # a lookup in Celery's request stack: once for all
        if self.metrics is not None:
            self.metrics.begin(task_id, task, request)
        if self.spans is not None:
            self.spans.begin(task_id, task, request)

    def postrun(
        self, task_id: str | None = None, task: Any = None, state: Any = None, **_: Any
    ) -> None:
        if task is None or task_id is None:
            return
        if self.metrics is not None:
            span = self.spans.span_of(task_id) if self.spans is not None else None
            self.metrics.end(task_id, task, state, span)
        if self.spans is not None:
            self.spans.end(task_id, task, state)
