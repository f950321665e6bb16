"""The OTLP encoding of spans: byte for byte what the SDK's encoder writes.

The spans here are the SDK's own ``ReadableSpan``s, built with whatever hypothesis draws: every
attribute type OTLP has (nested sequences and mappings included), values protobuf refuses,
events, links, parents local and remote, trace states, statuses, resources and scopes.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from tasklane.observability.span_export import encode_spans

#: Text protobuf can hold: no lone surrogates (they are not UTF-8).
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
#: Long enough that a length needs two bytes of varint.
long_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=100, max_size=300)
#: Any text, lone surrogates included: an attribute holding one is left out, not its batch.
any_texts = st.text(st.characters(blacklist_categories=()), max_size=10)
int64s = st.integers(-(2**63), 2**63 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    texts,
    long_texts,
    any_texts,
    int64s,
    st.floats(allow_nan=False),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(texts, inner, max_size=3),
    ),
    max_leaves=8,
)
attributes = st.one_of(st.none(), st.dictionaries(st.one_of(texts, any_texts), values, max_size=6))
ids = st.integers(1, 2**64 - 1)
trace_ids = st.integers(1, 2**128 - 1)
contexts = st.builds(
    SpanContext,
    trace_id=trace_ids,
    span_id=ids,
    is_remote=st.booleans(),
    trace_flags=st.sampled_from([TraceFlags(0), TraceFlags(1)]),
    trace_state=st.one_of(
        st.none(),
        st.lists(
            st.tuples(
                st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z"), st.from_regex(r"\A[a-z0-9]{1,8}\Z")
            ),
            max_size=3,
        ).map(TraceState),
    ),
)
times = st.one_of(st.none(), st.integers(0, 2**64 - 1))
events = st.lists(
    st.builds(Event, name=texts, attributes=attributes, timestamp=st.integers(0, 2**64 - 1)),
    max_size=3,
)
links = st.lists(st.builds(Link, context=contexts, attributes=attributes), max_size=3)
statuses = st.one_of(
    st.builds(Status, status_code=st.sampled_from(StatusCode), description=st.none()),
    st.builds(Status, status_code=st.just(StatusCode.ERROR), description=texts),
)
resources = st.sampled_from(
    [
        Resource({"service.name": "tasklane-notifier", "host.name": "a"}),
        Resource({"service.name": "tasklane-media"}, schema_url="https://opentelemetry.io/1.2"),
        Resource({}),
    ]
)
scopes = st.sampled_from(
    [
        None,
        InstrumentationScope("tasklane.observability.task_spans"),
        InstrumentationScope("httpx", "0.66b2", "https://opentelemetry.io/s", {"a": 1}),
    ]
)


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    return ReadableSpan(
        name=draw(st.one_of(texts, long_texts)),
        context=draw(contexts),
        parent=draw(st.one_of(st.none(), contexts)),
        resource=draw(resources),
        attributes=draw(attributes),
        events=draw(events),
        links=draw(links),
        kind=draw(st.sampled_from(SpanKind)),
        status=draw(statuses),
        start_time=draw(times),
        end_time=draw(times),
        instrumentation_scope=draw(scopes),
    )


def sdk_bytes(batch: list[ReadableSpan]) -> bytes:
    return sdk_encode(batch).SerializePartialToString()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(spans(), max_size=6))
def test_encodes_a_batch_as_the_sdk_does(batch: list[ReadableSpan]) -> None:
    # Both encoders log the attributes they leave out, keys included; a key with a lone
    # surrogate in a captured log cannot travel to pytest-xdist's controller. What is logged
    # is asserted below, with keys that can.
    logging.disable(logging.ERROR)
    try:
        assert encode_spans(batch) == sdk_bytes(batch)
    finally:
        logging.disable(logging.NOTSET)


SAMPLED = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (object(), "not an OTLP type"),
        (2**63, "past int64"),
        (-(2**63) - 1, "below int64"),
        ((1, object()), "inside a sequence"),
        ("x\udc80", "a lone surrogate"),
        (("\udc80",), "a lone surrogate in a sequence"),
    ],
)
def test_an_attribute_protobuf_cannot_hold_is_left_out_and_logged_as_the_sdk_does(
    value: Any, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    span = ReadableSpan("run/t", SAMPLED, attributes={"before": 1, "bad": value, "after": "x"})
    with caplog.at_level(logging.ERROR, logger="tasklane.observability.span_export"):
        encoded = encode_spans([span])
    assert encoded == sdk_bytes([span]), why
    assert "bad" in caplog.text


def test_a_name_that_is_not_utf8_fails_the_batch_as_in_the_sdk() -> None:
    span = ReadableSpan("run/\udc80", SAMPLED)
    with pytest.raises(UnicodeEncodeError):
        sdk_bytes([span])
    with pytest.raises(UnicodeEncodeError):
        encode_spans([span])


def test_the_spans_of_a_provider_are_encoded_as_the_sdk_does() -> None:
    """Spans as a real provider ends them: bounded attributes, events, a status, a parent."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "tasklane-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span(
        "run/t", kind=SpanKind.CONSUMER, attributes={"celery.action": "run", "n": 3}
    ) as span:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):
            pass
        span.add_event("started", {"k": "v"})
        span.set_status(Status(StatusCode.ERROR, "boom"))
    ended = list(exporter.get_finished_spans())
    assert len(ended) == 2
    assert encode_spans(ended) == sdk_bytes(ended)
    provider.shutdown()
