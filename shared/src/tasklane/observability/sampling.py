"""Deciding a task run's sampling without the SDK's general path, when it will not be sampled.

At 10 % sampling nine runs in ten record nothing, yet the SDK's ``Tracer.start_span`` walks the
same path for them as for a recorded span: the parent's context, the sampler chain, a sampling
result, the tracer's own metrics. :class:`UnsampledRuns` makes the decision of the
``parentbased_traceidratio`` sampler (the one production uses) with its own arithmetic and builds
the non-recording span the SDK would, ids drawn in the same order from the same generator; a run
to be sampled still goes to the tracer, which receives the trace id already drawn, and whose
sampler decides a span with no parent by the ratio alone.
Equivalence with the SDK is tested id for id (``tests/unit/tasklane/test_sampling.py``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from functools import partial

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util.types import Attributes


class ParentBasedTraceIdRatio(ParentBased):
    """The SDK's ``parentbased_traceidratio`` sampler, with its ratio sampler at hand.

    Decides exactly as ``ParentBased(TraceIdRatioBased(ratio))``: a parent's decision is kept,
    a root is sampled when its trace id's low 64 bits fall under the ratio's bound. A span
    started in an explicitly empty context (a worker's sampled run) is decided here by the ratio
    alone: the general path looks for a parent twice, some dozen calls, to find none.
    """

    def __init__(self, ratio: float) -> None:
        self.ratio = TraceIdRatioBased(ratio)
        super().__init__(root=self.ratio)
        self._bound = self.ratio.bound
        # Immutable, so shared: what the ratio sampler returns for a root without attributes.
        self._sampled = SamplingResult(Decision.RECORD_AND_SAMPLE)
        self._dropped = SamplingResult(Decision.DROP)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if parent_context is None or parent_context:
            return super().should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._bound:
            return self._dropped
        if attributes:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._sampled


class TraceIdsDrawnAhead(RandomIdGenerator):
    """The SDK's random ids; a trace id drawn before its span is made can be handed on to it.

    Per thread: :meth:`hand_on` gives the id to the next root span the same thread starts.
    """

    def __init__(self) -> None:
        self._ahead = threading.local()

    def hand_on(self, trace_id: int) -> None:
        """Make ``trace_id`` the next one :meth:`generate_trace_id` returns in this thread."""
        self._ahead.trace_id = trace_id

    def generate_trace_id(self) -> int:
        drawn: int | None = self._ahead.__dict__.pop("trace_id", None)
        return super().generate_trace_id() if drawn is None else drawn


class UnsampledRuns:
    """The span of a run its tracer's sampler drops, made without the tracer.

    Only for a tracer with :class:`ParentBasedTraceIdRatio` and :class:`TraceIdsDrawnAhead`
    (:meth:`of` says). What the SDK's own self-metrics would count for a dropped span is not
    counted; Tasklane configures no meter provider for them.
    """

    def __init__(self, bound: int, ids: TraceIdsDrawnAhead) -> None:
        self._bound = bound
        self._ids = ids
        self._root_flags = TraceFlags(
            TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT
        )

    @classmethod
    def of(cls, tracer: object) -> UnsampledRuns | None:
        """For ``tracer``, or ``None`` when its sampler or ids are not the ones above."""
        if not isinstance(tracer, Tracer):
            return None
        sampler, ids = tracer.sampler, tracer.id_generator
        if not isinstance(sampler, ParentBasedTraceIdRatio):
            return None
        if not isinstance(ids, TraceIdsDrawnAhead):
            return None
        return cls(sampler.ratio.bound, ids)

    def span(self, parent: SpanContext) -> NonRecordingSpan | None:
        """The run's non-recording span under ``parent``; ``None`` when it is to be sampled.

        ``None`` for a root run hands its trace id on to the tracer's next root span, which
        the tracer's sampler then samples as this decided.
        """
        if not parent.is_valid:
            return self.root()
        flags = parent.trace_flags
        if flags & TraceFlags.SAMPLED:
            return None
        # The parent's decision, its trace and its trace state, as ParentBased keeps them.
        context = SpanContext(
            parent.trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags & TraceFlags.RANDOM_TRACE_ID),
            trace_state=parent.trace_state,
        )
        return NonRecordingSpan(context)

    def root(self) -> NonRecordingSpan | None:
        """:meth:`span` for a run without a parent: most runs of a worker.

        The ids are drawn as :class:`TraceIdsDrawnAhead` draws them (the SDK's random ids), here
        rather than through it: that is four Python calls fewer for nine runs in ten.
        """
        trace_id = _random_bits(128)
        while not trace_id:
            trace_id = _random_bits(128)
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound:
            self._ids.hand_on(trace_id)
            return None
        span_id = _random_bits(64)
        while not span_id:
            span_id = _random_bits(64)
        # SpanContext(trace_id, span_id, False, flags) and NonRecordingSpan(context), made
        # without their two Python constructors: the ids were drawn in range and non-zero, so the
        # context is valid (its last field).
        span = _new_span(NonRecordingSpan)
        span._context = _span_context(
            (trace_id, span_id, False, self._root_flags, DEFAULT_TRACE_STATE, True)
        )
        return span


#: The SDK's ``RandomIdGenerator`` draws its ids from the ``random`` module's generator.
_random_bits = random.getrandbits
_span_context = partial(tuple.__new__, SpanContext)
_new_span = object.__new__
