"""Task run spans (:class:`tasklane.observability.task_spans.TaskSpans`) under Celery's own tracer.

Each task runs through ``celery.app.trace.build_tracer``, the function a pool child calls for
every message, with the request a message would give; spans go to the OpenTelemetry SDK's
in-memory exporter. Tasks that publish send to the real Redis. The traces seen end to end, over
OTLP from real workers, are in ``test_tracing.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.trace import build_tracer
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from tasklane.observability.sampling import ParentBasedTraceIdRatio, TraceIdsDrawnAhead
from tasklane.observability.task_spans import TaskSpans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Traced:
    """A Celery app whose task runs are traced by :class:`TaskSpans` into memory."""

    def __init__(self, redis_url: str, sampler: Sampler) -> None:
        self.exporter = InMemorySpanExporter()
        # As start_tracing makes it: the ids a ratio sampler's runs are decided apart with.
        self.provider = TracerProvider(sampler=sampler, id_generator=TraceIdsDrawnAhead())
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.spans = TaskSpans(self.provider.get_tracer("test"))
        self.queue = f"spans-{uuid.uuid4().hex[:8]}"
        self.app = Celery("spans", broker=redis_url, set_as_current=False)
        self.app.conf.update(task_default_queue=self.queue, task_serializer="json")
        self.seen: dict[str, Any] = {}

    def run(self, name: str, **request: Any) -> str:
        """Run task ``name`` as a pool child would a message with these request fields."""
        task = self.app.tasks[f"{self.queue}.{name}"]
        task_id = str(uuid.uuid4())
        tracer = build_tracer(task.name, task, app=self.app, eager=False, propagate=False)
        tracer(task_id, (), {}, {"id": task_id, "task": task.name, **request})
        return task_id

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def traced(redis_url: str) -> Iterator[Callable[[Sampler], Traced]]:
    made: list[Traced] = []

    def make(sampler: Sampler) -> Traced:
        made.append(Traced(redis_url, sampler))
        made[-1].spans.connect()
        return made[-1]

    yield make
    for each in made:
        each.spans.disconnect()
        with each.app.connection_for_write() as connection:
            connection.default_channel.queue_delete(each.queue)
        each.provider.shutdown()


def _define(t: Traced) -> None:
    @t.app.task(name=f"{t.queue}.ok", ignore_result=True, shared=False)
    def ok() -> str:
        t.seen["context"] = trace.get_current_span().get_span_context()
        return "done"

    @t.app.task(name=f"{t.queue}.broken", ignore_result=True, shared=False)
    def broken() -> None:
        raise ValueError("no such recipient")

    @t.app.task(name=f"{t.queue}.fan_out", ignore_result=True, shared=False)
    def fan_out() -> None:
        headers: dict[str, Any] = {}

        def capture(headers_out: dict[str, Any] = headers, **kwargs: Any) -> None:
            headers_out.update(kwargs["headers"])

        from celery import signals

        signals.after_task_publish.connect(capture, weak=False)
        try:
            t.app.send_task(f"{t.queue}.ok", queue=t.queue)
        finally:
            signals.after_task_publish.disconnect(capture)
        t.seen["published"] = headers


def test_a_message_without_trace_headers_runs_in_a_root_consumer_span(
    traced: Callable[[Sampler], Traced],
) -> None:
    t = traced(ALWAYS_ON)
    _define(t)
    task_id = t.run("ok", delivery_info={"routing_key": t.queue})
    (span,) = t.finished()
    name = f"{t.queue}.ok"
    assert (span.name, span.kind, span.parent) == (f"run/{name}", SpanKind.CONSUMER, None)
    assert span.attributes is not None
    assert span.attributes["messaging.message.id"] == task_id
    assert span.attributes["celery.task_name"] == name
    assert span.attributes["celery.action"] == "run"
    assert span.attributes["celery.state"] == "SUCCESS"
    # While the task ran, its span was the current one (log lines and HTTP spans join it).
    assert t.seen["context"] == span.get_span_context()


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(ALWAYS_OFF), ParentBasedTraceIdRatio(0.0)],
    ids=["always off", "ratio 0"],
)
def test_a_traceparent_is_continued(traced: Callable[[Sampler], Traced], sampler: Sampler) -> None:
    t = traced(sampler)
    _define(t)
    t.run("ok", traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    (span,) = t.finished()
    assert format_trace_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and format_span_id(span.parent.span_id) == PARENT_ID


@pytest.mark.parametrize(
    "sampler", [ParentBased(ALWAYS_ON), ParentBasedTraceIdRatio(1.0)], ids=["always on", "ratio 1"]
)
def test_an_unsampled_run_records_nothing_and_passes_its_decision_on(
    traced: Callable[[Sampler], Traced], sampler: Sampler
) -> None:
    t = traced(sampler)
    _define(t)
    t.run("fan_out", traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
    assert t.finished() == []
    # The task it published belongs to the same trace, still not sampled.
    _, trace_id, _, flags = t.seen["published"]["traceparent"].split("-")
    assert trace_id == TRACE_ID
    assert not int(flags, 16) & 1  # not sampled


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_run_without_a_parent_is_decided_by_the_ratio_and_runs_in_its_own_trace(
    traced: Callable[[Sampler], Traced], ratio: float
) -> None:
    t = traced(ParentBasedTraceIdRatio(ratio))
    _define(t)
    t.run("ok")
    recorded = t.finished()
    assert len(recorded) == int(ratio)
    context = t.seen["context"]
    # The span current while the task ran, recorded or not: a trace of its own.
    assert context.is_valid and not context.is_remote
    assert bool(context.trace_flags.sampled) == bool(ratio)
    if recorded:
        assert recorded[0].get_span_context() == context
    t.run("fan_out")
    _, trace_id, _, flags = t.seen["published"]["traceparent"].split("-")
    assert int(trace_id, 16) != 0 and bool(int(flags, 16) & 1) == bool(ratio)


def test_a_failed_run_is_an_error_span_with_the_exception(
    traced: Callable[[Sampler], Traced],
) -> None:
    t = traced(ALWAYS_ON)
    _define(t)
    t.run("broken")
    (span,) = t.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "no such recipient"
    assert span.attributes is not None and span.attributes["celery.state"] == "FAILURE"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"


def test_a_task_published_from_a_run_is_a_producer_span_its_message_points_to(
    traced: Callable[[Sampler], Traced],
) -> None:
    t = traced(ALWAYS_ON)
    _define(t)
    t.run("fan_out")
    produced, run = sorted(t.finished(), key=lambda s: s.kind == SpanKind.CONSUMER)
    assert (produced.name, produced.kind) == (f"apply_async/{t.queue}.ok", SpanKind.PRODUCER)
    assert produced.parent is not None and produced.parent.span_id == run.context.span_id
    _, trace_id, span_id, flags = t.seen["published"]["traceparent"].split("-")
    assert (trace_id, span_id) == (
        format_trace_id(run.context.trace_id),
        format_span_id(produced.context.span_id),
    )
    assert int(flags, 16) & 1  # sampled


class _HeaderPropagator(TextMapPropagator):
    """A propagator of another header than ``traceparent``, as B3 or Jaeger's would be."""

    HEADER = "x-test-trace"

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        values = getter.get(carrier, self.HEADER)
        if not values:
            return context or Context()
        trace_id, span_id = values[0].split(":")
        parent = trace.SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(1)
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(parent), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        context_of = trace.get_current_span(context).get_span_context()
        value = f"{format_trace_id(context_of.trace_id)}:{format_span_id(context_of.span_id)}"
        setter.set(carrier, self.HEADER, value)

    @property
    def fields(self) -> set[str]:
        return {self.HEADER}


def test_the_configured_propagators_headers_are_the_ones_read(
    traced: Callable[[Sampler], Traced],
) -> None:
    t = traced(ParentBased(ALWAYS_OFF))
    _define(t)
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_HeaderPropagator())
    try:
        t.run("ok", **{"x-test-trace": f"{TRACE_ID}:{PARENT_ID}"})
    finally:
        propagate.set_global_textmap(before)
    (span,) = t.finished()
    assert format_trace_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and format_span_id(span.parent.span_id) == PARENT_ID
