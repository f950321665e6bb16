"""Task runs observed around the tracer Celery sets on a task (``RunObservers``).

A worker process runs a task through ``task.__trace__``, which Celery builds with
``celery.app.trace.build_tracer`` and sets on the task in every pool. These tests set it the same
way on a real Tasklane app's ping task and run it as a pool process would, results stored in the
real Redis; spans go to the SDK's in-memory exporter. The traces of real workers over OTLP are
in ``test_tracing.py``, their metrics in ``test_metrics.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals
from celery.app.trace import build_tracer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from tasklane.observability.sampling import ParentBasedTraceIdRatio, TraceIdsDrawnAhead
from tasklane.observability.task_spans import TaskSpans
from tasklane.worker.app import TasklaneApp
from tasklane.worker.task import ContractTask

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter(notifier_app: TasklaneApp) -> Iterator[InMemorySpanExporter]:
    """The app's run observers make spans into memory, as a traced pool process would."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = TaskSpans(provider.get_tracer("test"))
    spans.connect(runs=False)
    notifier_app.run_observers.spans = spans
    notifier_app.run_observers.enabled = True
    yield exporter
    spans.disconnect()
    provider.shutdown()


def _ping(app: TasklaneApp) -> ContractTask:
    task: ContractTask = next(t for n, t in app.tasks.items() if n.endswith(".ping"))
    return task


def _run(task: ContractTask, *args: Any, **request: Any) -> tuple[str, Any]:
    """Run ``task`` through the tracer set on it, as a pool process runs a message."""
    task.__trace__ = build_tracer(task.name, task, app=task.app, eager=False)  # as a worker does
    task_id = str(uuid.uuid4())
    fields = {"id": task_id, "task": task.name, "delivery_info": {"routing_key": task.queue}}
    return task_id, task.__trace__(task_id, args, {}, {**fields, **request})


def test_a_run_is_observed_around_the_tracer_celery_sets_with_no_run_signal(
    notifier_app: TasklaneApp, exporter: InMemorySpanExporter
) -> None:
    # No receiver of the run signals anywhere in this process: Celery does not even send them.
    assert not signals.task_prerun.receivers
    assert not signals.task_postrun.receivers
    task_id, result = _run(_ping(notifier_app), traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert result.info is None  # succeeded
    (span,) = exporter.get_finished_spans()
    assert (span.name, span.kind) == (f"run/{_ping(notifier_app).name}", SpanKind.CONSUMER)
    assert format_trace_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and format_span_id(span.parent.span_id) == PARENT_ID
    assert span.attributes is not None
    assert span.attributes["celery.state"] == "SUCCESS"
    assert span.attributes["messaging.message.id"] == task_id
    # Read from the message's request, after Celery had taken the task's request down.
    assert span.attributes["messaging.destination"] == _ping(notifier_app).queue


def test_a_failed_run_is_an_error_span_its_failure_signal_found_open(
    notifier_app: TasklaneApp, exporter: InMemorySpanExporter
) -> None:
    # A positional argument breaks the contract: the task fails (and is dead-lettered).
    _, result = _run(_ping(notifier_app), "positional")
    assert result.info is not None and result.info.state == "FAILURE"
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["celery.state"] == "FAILURE"
    assert [event.name for event in span.events] == ["exception"]


class _BrokenMetrics:
    """A metrics recorder that fails as a run starts, or as it ends."""

    def __init__(self, fails_at: str) -> None:
        self.fails_at = fails_at

    def begin(self, task: Any, request: Any) -> object:
        if self.fails_at == "start":
            raise RuntimeError("recorder down")
        return object()

    def end(self, run: object, state: Any, span: Any) -> None:
        raise RuntimeError("recorder down")


@pytest.mark.parametrize("fails_at", ["start", "end"])
def test_an_observer_that_fails_is_logged_and_the_run_and_its_span_go_on(
    notifier_app: TasklaneApp,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    fails_at: str,
) -> None:
    notifier_app.run_observers.metrics = _BrokenMetrics(fails_at)
    with caplog.at_level(logging.ERROR, logger="tasklane.observability.runs"):
        _, result = _run(_ping(notifier_app))
    assert result.info is None
    # A run whose metrics did not start has none to end.
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        f"the run's metrics did not {fails_at}"
    ]
    (span,) = exporter.get_finished_spans()  # the span was made all the same
    assert span.attributes is not None and span.attributes["celery.state"] == "SUCCESS"


class _SpansSeen:
    """A metrics recorder that keeps the span each run's end is handed."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def begin(self, task: Any, request: Any) -> object:
        return object()

    def end(self, run: object, state: Any, span: Any) -> None:
        self.spans.append(span)


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "dropped"])
def test_the_metrics_get_the_runs_span_only_when_it_records(
    notifier_app: TasklaneApp, sampled: bool
) -> None:
    # The runtime's exemplar links to a recorded span; a dropped run's span has no trace to show.
    exporter = InMemorySpanExporter()
    sampler = ParentBasedTraceIdRatio(1.0 if sampled else 0.0)
    provider = TracerProvider(sampler=sampler, id_generator=TraceIdsDrawnAhead())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = TaskSpans(provider.get_tracer("test"))
    seen = _SpansSeen()
    notifier_app.run_observers.spans = spans
    notifier_app.run_observers.metrics = seen
    notifier_app.run_observers.enabled = True
    try:
        _run(_ping(notifier_app))
    finally:
        provider.shutdown()
    if sampled:
        (span,) = exporter.get_finished_spans()
        assert [s.get_span_context() for s in seen.spans] == [span.get_span_context()]
    else:
        assert exporter.get_finished_spans() == ()
        assert seen.spans == [None]


def test_a_worker_without_metrics_or_tracing_runs_the_tracer_celery_made(
    notifier_app: TasklaneApp,
) -> None:
    assert not notifier_app.run_observers.enabled  # neither is on in this process's environment
    task = _ping(notifier_app)
    tracer = build_tracer(task.name, task, app=notifier_app, eager=False)
    task.__trace__ = tracer
    assert task.__trace__ is tracer
