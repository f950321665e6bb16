"""Spans of a worker's task runs and of the tasks Celery publishes from inside them.

The spans, their names and attributes are those of ``opentelemetry-instrumentation-celery``
(``run/<task>`` as CONSUMER, ``apply_async/<task>`` as PRODUCER, its ``celery.*`` and
``messaging.*`` attributes), so traces read the same. Its signal handlers are not used: they do
the same work for every task, about 150 Python calls a task with the trace not sampled, which is
most tasks at production sampling ratios. These handlers skip the propagator when a message
carries none of its headers, keep no timing of their own and enter no context managers, and
make the span of a run the sampler drops themselves (:mod:`tasklane.observability.sampling`), so
an unsampled run costs a span decision and a context switch. The switch sets the API's context
variable itself when the API keeps its context in one (its default, :func:`runtime_context_var`):
``attach``, ``detach`` and ``get_current`` are two Python calls each around that one C call.
Measured in docs/performance.md §7.
Design: docs/observability.md#traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import signals
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.instrumentation.celery import celery_getter
from opentelemetry.instrumentation.celery.utils import (
    CELERY_CONTEXT_ATTRIBUTES,
    ContextCarrier,
)
from opentelemetry.propagators.textmap import default_getter
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_MESSAGE_ID,
)
from opentelemetry.semconv.trace import SpanAttributes
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation import _SPAN_KEY

from tasklane.observability.sampling import UnsampledRuns

ACTION = "celery.action"
TASK_NAME = "celery.task_name"
RETRY_REASON = "celery.retry.reason"
STATE = "celery.state"
_RUN = "run"
_APPLY_ASYNC = "apply_async"


def runtime_context_var() -> ContextVar[Context] | None:
    """The context variable the OpenTelemetry API keeps the current context in, or ``None``.

    The API's default runtime context (``ContextVarsRuntimeContext``) holds one; another one,
    chosen with ``OTEL_PYTHON_CONTEXT``, may not, and is then used through the API. Both names
    read here, and the span's key in a context (``_SPAN_KEY``), are private to the API:
    ``tests/unit/tasklane/test_task_context.py`` checks that this version still has them, and
    that a run's context set here is the one ``set_span_in_context`` and ``attach`` make.
    """
    runtime = getattr(context_api, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    var = getattr(runtime, "_current_context", None)
    return var if isinstance(var, ContextVar) else None


class TaskSpans:
    """Celery signal handlers that trace task runs in this process; see the module's text.

    One instance per process, made after the tracer provider is set (after the fork under
    prefork). A run's span is the current span while the task runs, so log lines, HTTP client
    spans and the tasks it publishes belong to it.
    """

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self.tracer = tracer or trace.get_tracer(__name__)
        #: Open spans, the context tokens to restore and whether the span records, by task id;
        #: publish spans apart because a retry publishes the task under the id of the run that
        #: is still open.
        self._runs: dict[str, tuple[trace.Span, Token[Context], bool]] = {}
        self._publishes: dict[str, trace.Span] = {}
        self._propagator: object = None
        self._fields: tuple[str, ...] = ()
        #: Spans of runs the sampler drops, made without the tracer (when its sampler allows).
        self._unsampled = UnsampledRuns.of(self.tracer)
        self._context_var = runtime_context_var()

    def connect(self, runs: bool = True) -> None:
        """Connect the handlers; ``runs=False`` leaves a run's start and end to the caller
        (:class:`tasklane.observability.runs.RunObservers` calls :meth:`begin` and :meth:`end`
        around Celery's tracer of the task)."""
        if runs:
            signals.task_prerun.connect(self.prerun, weak=False)
            signals.task_postrun.connect(self.postrun, weak=False)
        signals.task_failure.connect(self.failure, weak=False)
        signals.task_retry.connect(self.retry, weak=False)
        signals.before_task_publish.connect(self.before_publish, weak=False)
        signals.after_task_publish.connect(self.after_publish, weak=False)

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(self.prerun)
        signals.task_postrun.disconnect(self.postrun)
        signals.task_failure.disconnect(self.failure)
        signals.task_retry.disconnect(self.retry)
        signals.before_task_publish.disconnect(self.before_publish)
        signals.after_task_publish.disconnect(self.after_publish)

    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is not None and task_id is not None:
            self.begin(task_id, task, task.request)

    def postrun(
        self, task_id: str | None = None, task: Any = None, state: Any = None, **_: Any
    ) -> None:
        if task_id is not None:
            self.end(task_id, task, state)

    def begin(self, task_id: str, task: Any, request: Any) -> trace.Span | None:
        """A run of ``task`` starts: its span is made the current one, and returned when it
        records (``None`` for a run the sampler drops).

        ``request`` is the task's Celery request, or the mapping of the message it is made of
        (:class:`tasklane.observability.runs.RunObservers` hands that).
        """
        propagator = propagate.get_global_textmap()
        if propagator is not self._propagator:
            # Asked once per propagator (a composite builds its set anew on each call); one set
            # after the worker started is still the one read.
            self._propagator, self._fields = propagator, tuple(propagator.fields)
        parent = None
        # Most messages of an untraced upstream carry no trace header: nothing to extract.
        found = request.get  # a mapping's, or Celery's Context.get
        for field in self._fields:
            if found(field) is not None:
                getter = default_getter if isinstance(request, Mapping) else celery_getter
                parent = propagator.extract(request, getter=getter)
                break
        context_var = self._context_var
        if parent is None:
            # The current context, looked up once: the tracer, its sampler and the new context
            # would each look it up again (a task applied inside a span stays that span's child).
            parent = context_api.get_current() if context_var is None else context_var.get()
        span: trace.Span | None = None
        unsampled = self._unsampled
        if unsampled is not None:
            # A pool process starts a run in the empty context: a root, unless a header says
            # otherwise. Looked into only when it holds something.
            if parent:
                span = unsampled.span(trace.get_current_span(parent).get_span_context())
            else:
                span = unsampled.root()
        recording = span is None
        if span is None:
            span = self.tracer.start_span(
                f"{_RUN}/{task.name}", context=parent, kind=SpanKind.CONSUMER
            )
            recording = span.is_recording()
        if context_var is None:
            token = context_api.attach(trace.set_span_in_context(span, parent))
        else:
            # trace.set_span_in_context(span, parent), in one call rather than three.
            token = context_var.set(Context({**parent, _SPAN_KEY: span}))
        self._runs[task_id] = (span, token, recording)
        return span if recording else None

    def end(self, task_id: str, task: Any, state: Any, request: Any = None) -> None:
        """A run of ``task`` ended in ``state``: its span ends, the context before it is back.

        ``request`` is what :meth:`begin` was given; the task's current request when omitted.
        """
        run = self._runs.pop(task_id, None)
        if run is None:
            return
        span, token, recording = run
        # Asked of a recording span again: the task may have ended it.
        if recording and span.is_recording():
            context = task.request if request is None else request
            span.set_attributes(run_attributes(state, context, task.name))
            span.end()
        if self._context_var is None:
            context_api.detach(token)
        else:
            # Raises where detach would log: the run observers log it, naming the task.
            self._context_var.reset(token)

    def failure(
        self, task_id: str | None = None, sender: Any = None, einfo: Any = None, **_: Any
    ) -> None:
        run = self._runs.get(task_id) if task_id is not None else None
        if run is None or not run[0].is_recording():
            return
        span = run[0]
        error = einfo.exception if isinstance(einfo, ExceptionInfo) else einfo
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        throws = getattr(sender, "throws", ())
        if error is not None and throws and isinstance(error, throws):
            return  # an expected error, as Celery logs it: not a failed span
        if isinstance(error, BaseException):
            span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, None if error is None else str(error)))

    def retry(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        run = self._runs.get(task_id) if task_id is not None else None
        if run is not None and run[0].is_recording() and reason is not None:
            run[0].set_attribute(RETRY_REASON, str(reason))

    def before_publish(
        self, sender: Any = None, headers: Any = None, body: Any = None, **_: Any
    ) -> None:
        """A task Celery publishes (a retry, a canvas): a PRODUCER span, sent in its headers."""
        task_id = _published_id(headers, body)
        if task_id is None:
            return
        name = str(getattr(sender, "name", sender) or "unknown")
        span = self.tracer.start_span(f"{_APPLY_ASYNC}/{name}", kind=SpanKind.PRODUCER)
        if span.is_recording():
            span.set_attribute(ACTION, _APPLY_ASYNC)
            span.set_attribute(MESSAGING_MESSAGE_ID, task_id)
            span.set_attribute(TASK_NAME, name)
        self._publishes[task_id] = span
        if isinstance(headers, dict):
            propagate.inject(headers, context=trace.set_span_in_context(span))

    def after_publish(self, headers: Any = None, body: Any = None, **_: Any) -> None:
        task_id = _published_id(headers, body)
        span = self._publishes.pop(task_id, None) if task_id is not None else None
        if span is not None:
            span.end()


def run_attributes(state: Any, context: ContextCarrier, task_name: str) -> dict[str, Any]:
    """The attributes of a recorded run's span, as the Celery instrumentation sets them.

    ``celery.action``, what ``set_attributes_from_context`` takes from the run's state and from
    its request ``context``, then ``celery.task_name``; in one mapping, which the span takes in
    one call. Set one by one, each attribute costs a lock and four calls.
    """
    attributes: dict[str, Any] = {ACTION: _RUN}
    # What _add_context_attributes makes of {"state": state}, without its loop over every key.
    if state is not None and state != "":
        attributes[STATE] = state
    _add_context_attributes(attributes, context)
    attributes[TASK_NAME] = task_name
    return attributes


#: Request keys whose attribute is not named ``celery.<key>``.
_ATTRIBUTE_NAMES = {
    "id": MESSAGING_MESSAGE_ID,
    "correlation_id": SpanAttributes.MESSAGING_CONVERSATION_ID,
    "routing_key": SpanAttributes.MESSAGING_DESTINATION,
    "declare": SpanAttributes.MESSAGING_DESTINATION_KIND,
    "origin": "celery.hostname",  # Celery 4 renamed hostname
}


def _add_context_attributes(into: dict[str, Any], context: ContextCarrier) -> None:
    # opentelemetry-instrumentation-celery's set_attributes_from_context, into a mapping:
    # the same keys, skips, names and values (tests/unit/tasklane/test_run_attributes.py).
    for key in CELERY_CONTEXT_ATTRIBUTES:
        value = context.get(key)
        if value is None or value == "" or (key == "retries" and value == 0):
            continue
        if key == "timelimit":
            if value in [(None, None), [None, None]]:
                continue
            if None in value:
                value = ["" if limit is None else str(limit) for limit in value]
        elif key == "delivery_info":
            routing_key = value.get("routing_key")
            if routing_key is not None:
                into[SpanAttributes.MESSAGING_DESTINATION] = routing_key
            value = str(value)
        elif key == "declare":
            value = _destination_kind(value)
        into[_ATTRIBUTE_NAMES.get(key) or f"celery.{key}"] = value


def _destination_kind(declares: Any) -> Any:
    """``queue`` or ``topic`` for the first direct or topic exchange declared, else as given."""
    for declare in declares:
        if declare.exchange.type == "direct":
            return "queue"
        if declare.exchange.type == "topic":
            return "topic"
    return declares


def _published_id(headers: Any, body: Any) -> str | None:
    # Protocol 2 keeps the id in the headers, protocol 1 in the body.
    for carrier in (headers, body):
        if isinstance(carrier, dict) and carrier.get("id"):
            return str(carrier["id"])
    return None
