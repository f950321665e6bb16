"""What a worker process observes of each task run: its metrics and its span, around the run.

Celery runs a task in a process through the task's tracer (``task.__trace__``, built by
``celery.app.trace.build_tracer``). :meth:`RunObservers.observe` wraps that tracer, so a run's
metrics and span start before it and end after it, result stored, with no signal sent: Celery's
``task_prerun`` and ``task_postrun`` cost each task a dispatch apiece (a lock, the receivers'
lookup, the keyword arguments), more than the span of an unsampled run costs. The request is
read once, and the run's span is handed to the metrics (the runtime's exemplar) rather than
looked up in the context. Design: docs/observability.md#worker-metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from celery.states import SUCCESS
from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

#: Celery's task tracer: ``(task_id, args, kwargs, request) -> trace_ok_t``.
Tracer = Callable[..., Any]


class RunMetrics(Protocol):
    """What records a run's metrics (:class:`tasklane.observability.metrics.TaskRecorder`)."""

    def begin(self, task: Any, request: Mapping[str, Any]) -> Any:
        """A run starts; returns what :meth:`end` is given of it."""

    def end(self, run: Any, state: Any, span: Span | None) -> None:
        """A run ended in ``state``; ``span`` is its span when it records."""


class RunSpans(Protocol):
    """What makes a run's span (:class:`tasklane.observability.task_spans.TaskSpans`)."""

    def begin(self, task_id: str, task: Any, request: Any) -> Span | None:
        """A run starts; returns its span when it records."""

    def end(self, task_id: str, task: Any, state: Any, request: Any = None) -> None: ...


class RunObservers:
    """The metrics and spans of the task runs of a worker's processes.

    Made with the app; the metrics recorder is set before the pool forks, each process's spans
    once its tracing starts (after the fork under prefork): a tracer wrapped before either is
    set reads them at each run. Metrics go first at both ends: a run's queue wait is taken
    before its span starts, its runtime while its span is current.
    """

    def __init__(self) -> None:
        self.metrics: RunMetrics | None = None
        self.spans: RunSpans | None = None
        #: Set when metrics or tracing are installed: otherwise tracers stay as Celery made them.
        self.enabled = False

    def observe(self, task: Any, tracer: Tracer) -> Tracer:
        """``tracer``, Celery's tracer of ``task``, with each run observed around it."""
        if not self.enabled:
            return tracer

        def observed(
            task_id: str, args: Any, kwargs: Any, request: Mapping[str, Any] | None = None
        ) -> Any:
            metrics, spans = self.metrics, self.spans
            if metrics is None and spans is None:
                return tracer(task_id, args, kwargs, request)
            # The message's request: headers, delivery info, retries (Celery's Context reads
            # the same mapping).
            fields: Mapping[str, Any] = request if request is not None else {}
            # An observer's error must not fail the run, as a signal receiver's would not, nor
            # keep the other observer from it. Written out here rather than in helpers: this
            # runs for every task.
            run = None
            if metrics is not None:
                try:
                    run = metrics.begin(task, fields)
                except Exception:
                    logger.exception("%s[%s]: the run's metrics did not start", task.name, task_id)
            span = None
            if spans is not None:
                try:
                    span = spans.begin(task_id, task, fields)
                except Exception:
                    logger.exception("%s[%s]: the run's span did not start", task.name, task_id)
            state = None
            try:
                result = tracer(task_id, args, kwargs, request)
                info = result[1]  # trace_ok_t(retval, info, runtime, retstr)
                state = SUCCESS if info is None else info.state
                return result
            finally:
                if run is not None:
                    try:
                        metrics.end(run, state, span)  # type: ignore[union-attr]
                    except Exception:
                        logger.exception(
                            "%s[%s]: the run's metrics did not end", task.name, task_id
                        )
                if spans is not None:
                    try:
                        spans.end(task_id, task, state, fields)
                    except Exception:
                        logger.exception("%s[%s]: the run's span did not end", task.name, task_id)

        observed.__wrapped__ = tracer  # type: ignore[attr-defined]
        return observed
