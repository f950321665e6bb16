"""The span exporter against a real HTTP receiver: what the SDK's exporter sends, and its refusals.

Both exporters send the same spans to one local server; the requests are compared as they
arrived (body, content type, encoding).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tasklane.observability.span_export import SpanExporter, encode_spans
from tasklane_dev.sinks import Reply, WebhookSink
from tests.support.otlp import OtlpReceiver


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with WebhookSink() as server:
        yield server


def ended_spans(count: int = 3) -> list[ReadableSpan]:
    """Spans of a real provider, ended: a run with an error, a child, an event."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "tasklane-test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    for n in range(count):
        with tracer.start_as_current_span(
            f"run/t{n}", kind=SpanKind.CONSUMER, attributes={"celery.action": "run", "n": n}
        ) as run:
            with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as child:
                child.add_event("sent", {"bytes": 120})
            run.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_sends_the_request_the_sdk_exporter_sends(sink: WebhookSink) -> None:
    spans = ended_spans()
    endpoint = f"{sink.url}/v1/traces"
    assert SpanExporter(endpoint=endpoint).export(spans) is SpanExportResult.SUCCESS
    assert OTLPSpanExporter(endpoint=endpoint).export(spans) is SpanExportResult.SUCCESS
    ours, sdks = sink.wait_for(2)
    assert ours.path == sdks.path == "/v1/traces"
    assert ours.headers["content-type"] == sdks.headers["content-type"]
    assert ours.body == sdks.body


def test_compresses_as_configured(sink: WebhookSink) -> None:
    spans = ended_spans()
    exporter = SpanExporter(endpoint=f"{sink.url}/v1/traces", compression=Compression.Gzip)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    (request,) = sink.wait_for(1)
    assert request.headers["content-encoding"] == "gzip"
    assert gzip.decompress(request.body) == encode_spans(spans)


def test_a_refused_export_is_a_failure(sink: WebhookSink) -> None:
    sink.script(Reply(status=400))
    exporter = SpanExporter(endpoint=f"{sink.url}/v1/traces")
    assert exporter.export(ended_spans(1)) is SpanExportResult.FAILURE
    assert len(sink.wait_for(1)) == 1  # 400 is not retried


def test_a_batch_over_the_size_limit_is_dropped_unsent(
    sink: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = SpanExporter(endpoint=f"{sink.url}/v1/traces", max_request_size=64)
    assert exporter.export(ended_spans()) is SpanExportResult.FAILURE
    assert "exceeds max_request_size 64 bytes" in caplog.text
    exporter.export([])  # an empty batch is under any limit: it reaches the receiver
    assert len(sink.wait_for(1)) == 1


def test_nothing_is_sent_after_shutdown(sink: WebhookSink) -> None:
    exporter = SpanExporter(endpoint=f"{sink.url}/v1/traces")
    exporter.shutdown()
    assert exporter.export(ended_spans(1)) is SpanExportResult.FAILURE
    assert sink.requests == []


def test_a_worker_process_exports_with_this_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``start_tracing`` (what each pool process calls) sends its spans through it."""
    from opentelemetry import trace

    from tasklane.observability.tracing import start_tracing, stop_tracing
    from tests.support.otlp import forget_global_provider

    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        provider = start_tracing("test")
        assert provider is not None
        try:
            processor = provider._active_span_processor._span_processors[0]
            assert type(processor.span_exporter) is SpanExporter
            with trace.get_tracer("tests").start_as_current_span("run/a", kind=SpanKind.CONSUMER):
                with trace.get_tracer("tests").start_as_current_span("GET"):
                    pass
        finally:
            stop_tracing(provider)
            forget_global_provider()
        spans = receiver.wait_for(lambda got: len(got) == 2)
    by_name = {span.name: span for span in spans}
    assert by_name["GET"].parent_span_id == by_name["run/a"].span_id
    assert by_name["run/a"].kind == "CONSUMER"
    assert by_name["run/a"].service == "tasklane-test"
    assert receiver.refused == []
