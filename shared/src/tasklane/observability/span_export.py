"""OTLP/HTTP export of spans, encoded straight to protobuf's wire format.

The SDK's exporter turns each span into protobuf message objects first: about 150 Python calls
and 70 µs for a task run's span (docs/performance.md §7), on the exporter's thread of a pool
process, which shares the interpreter with the thread that runs the tasks. :func:`encode_spans`
writes the same bytes directly, field by field in field-number order as protobuf serializes
them; ``tests/unit/tasklane/test_span_export.py`` holds its output byte for byte against the
SDK's encoder for any span hypothesis makes. :class:`SpanExporter` is the SDK's OTLP/HTTP exporter
(endpoint, headers, compression, retries, its own metrics) with only the encoding swapped.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import SpanContext, SpanKind

logger = logging.getLogger(__name__)

#: Wire types of protobuf's tags.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
#: ``SpanFlags``: whether the parent's being remote is known, and whether it is.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_KINDS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ONE_BYTE = tuple(bytes((n,)) for n in range(128))
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack


def _varint(value: int) -> bytes:
    if value < 128:
        return _ONE_BYTE[value] if value >= 0 else _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    out = bytearray()
    while value > 127:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


#: The tag of a length-delimited field, by field number.
_LENGTH_TAGS = tuple(_tag(field, _LENGTH) for field in range(17))


def _length_delimited(field: int, payload: bytes) -> bytes:
    size = len(payload)
    return _LENGTH_TAGS[field] + (_ONE_BYTE[size] if size < 128 else _varint(size)) + payload


def _string(field: int, text: str | None) -> bytes:
    """A proto3 string field: nothing when empty, as protobuf leaves a default out."""
    return _length_delimited(field, text.encode()) if text else b""


def _uint(field: int, value: int | None) -> bytes:
    return _tag(field, _VARINT) + _varint(value) if value else b""


def _fixed64(field: int, value: int | None) -> bytes:
    return _tag(field, _FIXED64) + _pack_fixed64(value) if value else b""


# AnyValue's fields.
_STRING_VALUE = _tag(1, _LENGTH)
_BOOL_TRUE = _tag(2, _VARINT) + b"\x01"
_BOOL_FALSE = _tag(2, _VARINT) + b"\x00"
_INT_VALUE = _tag(3, _VARINT)
_DOUBLE_VALUE = _tag(4, _FIXED64)
_ARRAY_VALUE = 5
_KVLIST_VALUE = 6
_BYTES_VALUE = _tag(7, _LENGTH)
# KeyValue's fields: key, then its AnyValue.
_KEY = _tag(1, _LENGTH)
_VALUE = _tag(2, _LENGTH)


def _any_value(value: Any) -> bytes:
    """An AnyValue's fields; a oneof member is written even when it holds its default."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _BOOL_TRUE if value else _BOOL_FALSE
    if isinstance(value, str):
        data = value.encode()
        return _STRING_VALUE + _varint(len(data)) + data
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")  # as protobuf refuses it
        return _INT_VALUE + _varint(value)
    if isinstance(value, float):
        return _DOUBLE_VALUE + _pack_double(value)
    if isinstance(value, bytes):
        return _BYTES_VALUE + _varint(len(value)) + value
    if isinstance(value, Sequence):
        items = b"".join(_length_delimited(1, _any_value(item)) for item in value)
        return _length_delimited(_ARRAY_VALUE, items)
    if isinstance(value, Mapping):
        pairs = b"".join(_length_delimited(1, _key_value(str(k), v)) for k, v in value.items())
        return _length_delimited(_KVLIST_VALUE, pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    encoded = _any_value(value)
    return _key_field(key) + _VALUE + _varint(len(encoded)) + encoded


@functools.lru_cache(maxsize=4096)
def _key_field(key: str) -> bytes:
    """A KeyValue's key field; cached, as a process's spans repeat a few dozen keys."""
    name = key.encode()
    return _KEY + _varint(len(name)) + name if name else b""


def _attributes(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue ``field``; one that cannot be encoded is left out and logged, as the
    SDK's encoder does. Short strings, the most common values, are written out here."""
    if not attributes:
        return b""
    tag = _LENGTH_TAGS[field]
    parts = []
    for key, value in attributes.items():
        try:  # a lone surrogate in a key or a string fails its encoding too
            data = value.encode() if type(value) is str else None
            if data is not None and len(data) < 126:  # its two lengths fit in a byte each
                pair = b"%s\x12%c\x0a%c%s" % (_key_field(key), len(data) + 2, len(data), data)
            else:
                pair = _key_value(key, value)
        except Exception as error:
            logger.exception("Failed to encode key %s: %s", key, error)
            continue
        size = len(pair)
        parts.append(tag + (_ONE_BYTE[size] if size < 128 else _varint(size)) + pair)
    return b"".join(parts)


_SPAN_FLAGS = _tag(16, _FIXED32)
_LINK_FLAGS = _tag(6, _FIXED32)
_TRACE_ID = _tag(1, _LENGTH) + _varint(16)
_SPAN_ID = _tag(2, _LENGTH) + _varint(8)
_PARENT_SPAN_ID = _tag(4, _LENGTH) + _varint(8)
_KIND = _tag(6, _VARINT)


def _flags(field_tag: bytes, context: SpanContext | None) -> bytes:
    """``SpanFlags`` of a span (its parent's ``context``) or a link (the linked one)."""
    remote = _IS_REMOTE if context is not None and context.is_remote else 0
    return field_tag + _pack_fixed32(_HAS_IS_REMOTE | remote)


def _span(span: ReadableSpan) -> bytes:
    context: Any = span.get_span_context()  # always set on an ended span, as the SDK assumes
    parent = span.parent
    state = context.trace_state
    status = span.status
    status_fields = b""
    if status is not None:
        status_fields = _string(2, status.description) + _uint(3, status.status_code.value)
    return b"".join(
        (
            _TRACE_ID,
            context.trace_id.to_bytes(16, "big"),
            _SPAN_ID,
            context.span_id.to_bytes(8, "big"),
            _string(3, ",".join(f"{k}={v}" for k, v in state.items())) if state else b"",
            _PARENT_SPAN_ID + parent.span_id.to_bytes(8, "big") if parent else b"",
            _string(5, span.name),
            _KIND + _varint(_KINDS[span.kind]),
            _fixed64(7, span.start_time),
            _fixed64(8, span.end_time),
            _attributes(9, span.attributes),
            _uint(10, span.dropped_attributes),
            b"".join(_length_delimited(11, _event(event)) for event in span.events),
            _uint(12, span.dropped_events),
            b"".join(_length_delimited(13, _link(link)) for link in span.links),
            _uint(14, span.dropped_links),
            _length_delimited(15, status_fields) if status is not None else b"",
            _flags(_SPAN_FLAGS, parent),
        )
    )


def _event(event: Any) -> bytes:
    return (
        _fixed64(1, event.timestamp)
        + _string(2, event.name)
        + _attributes(3, event.attributes)
        + _uint(4, event.dropped_attributes)
    )


def _link(link: Any) -> bytes:
    context: SpanContext = link.context
    return (
        _TRACE_ID
        + context.trace_id.to_bytes(16, "big")
        + _SPAN_ID
        + context.span_id.to_bytes(8, "big")
        + _attributes(4, link.attributes)
        + _uint(5, link.dropped_attributes)
        + _flags(_LINK_FLAGS, context)
    )


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    return _string(1, scope.name) + _string(2, scope.version) + _attributes(3, scope.attributes)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans``, serialized: the bytes of the SDK's
    ``encode_spans(spans).SerializePartialToString()``.

    Spans are grouped by resource and then by instrumentation scope in the order each is first
    seen, as the SDK groups them; one provider's spans share their resource object, which is
    looked up by identity first rather than hashed (the SDK's hash of a resource writes its
    attributes out as JSON, for every span).
    """
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    by_identity: dict[int, dict[Any, list[bytes]]] = {}
    for span in spans:
        resource = span.resource
        scopes = by_identity.get(id(resource))
        if scopes is None:
            scopes = by_identity[id(resource)] = groups.setdefault(resource, {})
        scope = span.instrumentation_scope or None
        encoded = scopes.get(scope)
        if encoded is None:
            encoded = scopes[scope] = []
        encoded.append(_span(span))
    request = []
    for resource, scopes in groups.items():
        scope_spans = []
        for scope, encoded in scopes.items():
            body = b"".join(
                (
                    _length_delimited(1, _scope(scope)),
                    b"".join(_length_delimited(2, span) for span in encoded),
                    _string(3, scope.schema_url if scope else None),
                )
            )
            scope_spans.append(_length_delimited(2, body))
        resource_spans = (
            _length_delimited(1, _attributes(1, resource.attributes))
            + b"".join(scope_spans)
            + _string(3, resource.schema_url)
        )
        request.append(_length_delimited(1, resource_spans))
    return b"".join(request)


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with :func:`encode_spans`.

    Everything but the encoding is the base class's: its settings (``OTEL_EXPORTER_OTLP_*``),
    its request size limit, its HTTP client with compression and retries, and its own metrics.
    :meth:`export` is the base's with the encoding changed, so it reads the base's private
    ``_shutdown``, ``_metrics``, ``_max_request_size`` and ``_client``;
    ``tests/integration/observability/test_span_export.py`` sends through both exporters to a
    real receiver, compares what arrived, and fails if a version renames them.
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return super().export(spans)  # which logs the refusal
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans)
            except Exception as error:
                logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(data, self._max_request_size):
                logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size"
                    " %d bytes.",
                    len(data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(data)} bytes exceeds"
                    f" max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    None
                    if sent.status_code is None
                    else {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
