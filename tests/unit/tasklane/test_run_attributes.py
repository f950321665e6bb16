"""A recorded run's span gets, in one call, the attributes the Celery instrumentation would set.

Each context is given to ``opentelemetry-instrumentation-celery``'s own
``set_attributes_from_context`` on one SDK span and to :func:`run_attributes` on another; the two
spans must end with the same attributes.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from kombu import Exchange, Queue
from opentelemetry.instrumentation.celery.utils import set_attributes_from_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from tasklane.observability.task_spans import ACTION, TASK_NAME, run_attributes

TRACER = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
TASK = "notifier.email.send"

_text = st.one_of(st.none(), st.just(""), st.text(max_size=12), st.integers(-5, 5))
_limit = st.one_of(st.none(), st.integers(1, 600))
_queue = st.sampled_from(["direct", "topic", "fanout"]).map(
    lambda kind: Queue("q", Exchange("x", type=kind), routing_key="q")
)
_VALUES: dict[str, Any] = {
    "retries": st.one_of(st.none(), st.integers(0, 3)),
    "timelimit": st.one_of(
        st.none(), st.tuples(_limit, _limit), st.lists(_limit, min_size=2, max_size=2)
    ),
    "delivery_info": st.one_of(
        st.none(),
        st.fixed_dictionaries({}, optional={"routing_key": _text, "exchange": st.text(max_size=5)}),
    ),
    "declare": st.one_of(st.none(), st.lists(_queue, max_size=3)),
}
_KEYS = (
    "compression", "correlation_id", "countdown", "eta", "exchange", "expires", "hostname",
    "id", "priority", "queue", "reply_to", "routing_key", "serializer", "origin", "state",
)  # fmt: skip
_contexts = st.fixed_dictionaries(
    {}, optional={**{key: _text for key in _KEYS}, **_VALUES, "unrelated": _text}
)


def _as_the_instrumentation_sets_them(state: Any, context: Any) -> ReadableSpan:
    span = TRACER.start_span("run/t")
    span.set_attribute(ACTION, "run")
    set_attributes_from_context(span, {"state": state})
    set_attributes_from_context(span, context)
    span.set_attribute(TASK_NAME, TASK)
    span.end()
    return span  # type: ignore[return-value]


def _in_one_call(state: Any, context: Any) -> ReadableSpan:
    span = TRACER.start_span("run/t")
    span.set_attributes(run_attributes(state, context, TASK))
    span.end()
    return span  # type: ignore[return-value]


@given(state=_text, context=_contexts)
def test_a_request_mapping_gives_the_attributes_the_instrumentation_gives(
    state: Any, context: dict[str, Any]
) -> None:
    expected = _as_the_instrumentation_sets_them(state, context)
    assert dict(_in_one_call(state, context).attributes or {}) == dict(expected.attributes or {})


def test_a_celery_request_context_gives_the_attributes_the_instrumentation_gives() -> None:
    app = Celery("attributes", set_as_current=False)
    app.conf.task_default_queue = "notifier.email"

    @app.task(name=TASK, shared=False)
    def send() -> None: ...

    send.push_request(
        id="4f1c", retries=2, delivery_info={"routing_key": "notifier.email", "exchange": ""},
        hostname="worker@a", timelimit=(300, None), correlation_id="4f1c",
    )  # fmt: skip
    try:
        expected = _as_the_instrumentation_sets_them("SUCCESS", send.request)
        got = _in_one_call("SUCCESS", send.request)
    finally:
        send.pop_request()
    assert dict(got.attributes or {}) == dict(expected.attributes or {})
    assert got.attributes is not None
    assert got.attributes["messaging.destination"] == "notifier.email"
    assert got.attributes["celery.timelimit"] == ("300", "")
