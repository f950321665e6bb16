"""A local OTLP/HTTP trace receiver: the spans real processes exported, decoded for assertions."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.util._once import Once

from tasklane_dev.sinks import HttpRecorder
from tests.support import eventually

PROTOBUF = "application/x-protobuf"


def forget_global_provider() -> None:
    """Undo a test's ``start_tracing``, so later tests get the no-op API again.

    OTel sets the global provider once per process and offers no public reset; this is what
    opentelemetry-test-utils' ``reset_trace_globals`` does.
    """
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span; ids are lower-case hex, ``kind`` is ``PRODUCER``, ``CLIENT``, ..."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    service: str
    status: str


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    if field == "array_value":
        return [_value(item) for item in value.array_value.values]
    if field == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if field is None else getattr(value, field)


def _attributes(pairs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(pairs)
    return {pair.key: _value(pair.value) for pair in items}


def _decode(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        service=service,
                        status=Status.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                    )
                )
    return spans


def _inflate(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class OtlpReceiver(HttpRecorder):
    """Accepts ``POST /v1/traces`` (protobuf, gzip or deflate) on 127.0.0.1 and keeps the spans.

    Requests it cannot take are answered 4xx and listed in :attr:`refused`, so a test can tell
    an exporter speaking the wrong protocol from one that sent nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self._spans: list[ReceivedSpan] = []
        self.refused: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                problem = receiver._take(
                    self.path,
                    self.headers.get("Content-Type", ""),
                    self.headers.get("Content-Encoding", ""),
                    body,
                )
                if problem is not None:
                    with receiver._lock:
                        receiver.refused.append(problem)
                    self.send_error(400 if problem.startswith("undecodable") else 415, problem)
                    return
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._serve(Handler, join_handlers=False)

    def _take(self, path: str, content_type: str, encoding: str, body: bytes) -> str | None:
        """Store the spans of one export; the reason when the request is refused."""
        if path.split("?", 1)[0] != "/v1/traces":
            return f"unsupported path {path}"
        if content_type.split(";", 1)[0].strip() != PROTOBUF:
            return f"unsupported content type {content_type!r}"
        try:
            request = ExportTraceServiceRequest.FromString(_inflate(body, encoding.strip()))
        except Exception as exc:
            return f"undecodable export: {exc}"
        spans = _decode(request)
        with self._lock:
            self._spans.extend(spans)
        return None

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends ``/v1/traces``)."""
        return self.url

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """Poll until ``predicate(spans)`` holds; returns the spans, or fails naming what came."""

        def matching() -> tuple[list[ReceivedSpan]] | None:
            spans = self.spans
            return (spans,) if predicate(spans) else None  # truthy even when no span is wanted

        def seen() -> str:
            got = "\n".join(
                f"  {s.trace_id} {s.span_id} <- {s.parent_span_id} {s.kind} {s.name} [{s.service}]"
                for s in self.spans
            )
            return f"matching spans; refused: {self.refused}; got:\n{got}"

        (spans,) = eventually(matching, timeout=timeout, message=seen)
        return spans
