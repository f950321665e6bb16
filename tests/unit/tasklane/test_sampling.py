"""Runs decided without the SDK's general path decide, and get ids, exactly as the SDK's would."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from tasklane.observability.sampling import (
    ParentBasedTraceIdRatio,
    TraceIdsDrawnAhead,
    UnsampledRuns,
)

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
STATE = TraceState([("vendor", "opaque")])


def _parent(flags: int, *, remote: bool = True) -> Context:
    context = SpanContext(TRACE_ID, PARENT_ID, remote, TraceFlags(flags), STATE)
    return trace.set_span_in_context(NonRecordingSpan(context))


@pytest.fixture(autouse=True)
def _random_state_kept() -> Iterator[None]:
    # The SDK draws ids from the random module, which these tests seed: later tests get it back.
    state = random.getstate()
    yield
    random.setstate(state)


PARENTS = {
    "root": Context(),
    "remote, not sampled": _parent(0x00),
    "remote, not sampled, random trace id": _parent(0x02),
    "remote, sampled": _parent(0x01),
    "local, not sampled": _parent(0x00, remote=False),
    "local, sampled": _parent(0x03, remote=False),
}


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("parent", list(PARENTS))
def test_each_run_gets_the_span_context_the_sdk_gives_it(ratio: float, parent: str) -> None:
    reference = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(ratio)), id_generator=RandomIdGenerator()
    ).get_tracer("reference")
    tracer = TracerProvider(
        sampler=ParentBasedTraceIdRatio(ratio), id_generator=TraceIdsDrawnAhead()
    ).get_tracer("tasklane")
    runs = UnsampledRuns.of(tracer)
    assert runs is not None
    context = PARENTS[parent]
    parent_context = trace.get_current_span(context).get_span_context()
    decided = {True: 0, False: 0}
    for seed in range(400):
        random.seed(seed)
        expected = reference.start_span("run/t", context=context)
        random.seed(seed)
        span = runs.span(parent_context) or tracer.start_span("run/t", context=context)
        assert span.get_span_context() == expected.get_span_context(), seed
        assert span.is_recording() == expected.is_recording(), seed
        assert type(span) is type(expected), seed
        decided[span.is_recording()] += 1
        # A trace id handed on to the tracer is used once: the next root span draws its own.
        random.seed(seed + 10_000)
        next_id = tracer.id_generator.generate_trace_id()
        random.seed(seed + 10_000)
        assert next_id == reference.id_generator.generate_trace_id(), seed
        for made in (span, expected):
            made.end()
    if parent == "root" and 0.0 < ratio < 1.0:
        assert decided[True] and decided[False]  # both ways were compared


def test_only_the_parent_based_ratio_sampler_with_ids_drawn_ahead_is_decided_apart() -> None:
    def runs(sampler: object, ids: RandomIdGenerator) -> UnsampledRuns | None:
        return UnsampledRuns.of(TracerProvider(sampler=sampler, id_generator=ids).get_tracer("t"))

    assert runs(ParentBasedTraceIdRatio(0.1), TraceIdsDrawnAhead()) is not None
    assert runs(ParentBased(TraceIdRatioBased(0.1)), TraceIdsDrawnAhead()) is None
    assert runs(ParentBasedTraceIdRatio(0.1), RandomIdGenerator()) is None
    assert runs(ALWAYS_ON, TraceIdsDrawnAhead()) is None
    assert UnsampledRuns.of(trace.NoOpTracer()) is None


CONTEXTS = {**PARENTS, "the current context": None}


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("attributes", [None, {}, {"sampler.attribute": "kept"}])
def test_the_sampler_decides_as_the_sdks_parent_based_ratio_sampler(
    ratio: float, context: str, attributes: dict[str, str] | None
) -> None:
    reference = ParentBased(TraceIdRatioBased(ratio))
    sampler = ParentBasedTraceIdRatio(ratio)
    parent = CONTEXTS[context]
    generator = random.Random(7)
    for _ in range(300):
        trace_id = generator.getrandbits(128)
        expected = reference.should_sample(parent, trace_id, "run/t", None, attributes, None)
        decided = sampler.should_sample(parent, trace_id, "run/t", None, attributes, None)
        assert decided.decision == expected.decision, hex(trace_id)
        assert dict(decided.attributes) == dict(expected.attributes), hex(trace_id)
        assert decided.trace_state == expected.trace_state, hex(trace_id)
