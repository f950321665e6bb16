"""A run's span is made current by setting the API's context variable, as ``attach`` would.

:class:`TaskSpans` reads two private names of the OpenTelemetry API to do so; these tests fail
when an upgrade renames them (the fast path would silently turn off) or when what the fast path
sets differs from what the API's own calls set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import Token
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.context.context import _RuntimeContext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from tasklane.observability.task_spans import TaskSpans, runtime_context_var

TASK = SimpleNamespace(name="notifier.email.send")


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider.get_tracer("test")


def test_the_api_of_this_version_keeps_its_context_in_a_context_variable() -> None:
    variable = runtime_context_var()
    assert variable is not None
    # The very variable the API's own calls read and set.
    token = context_api.attach(Context({"marker": 1}))
    try:
        assert variable.get() is context_api.get_current()
    finally:
        context_api.detach(token)


def test_a_run_is_current_while_it_runs_and_the_context_before_it_is_back_after(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    spans = TaskSpans(tracer)
    assert spans._context_var is not None
    for parent in (Context(), Context({"other": "value"})):
        token = context_api.attach(parent)
        before = context_api.get_current()
        span = spans.begin("id-0", TASK, {"id": "id-0"})
        assert span is not None
        # What the API's own call would have made current: the parent's values and the span.
        assert context_api.get_current() == trace.set_span_in_context(span, parent)
        assert type(context_api.get_current()) is Context
        spans.end("id-0", TASK, "SUCCESS", {"id": "id-0"})
        assert context_api.get_current() is before
        context_api.detach(token)
    exported.clear()

    before = context_api.get_current()
    span = spans.begin("id-1", TASK, {"id": "id-1"})
    assert span is not None
    assert trace.get_current_span() is span
    with tracer.start_as_current_span("inside") as child:
        assert child.parent is not None
        assert child.parent.span_id == span.get_span_context().span_id
    spans.end("id-1", TASK, "SUCCESS", {"id": "id-1"})
    assert context_api.get_current() is before
    assert [s.name for s in exported.get_finished_spans()] == ["inside", "run/notifier.email.send"]


class _DictRuntimeContext(_RuntimeContext):
    """A runtime context without a context variable, as one chosen with OTEL_PYTHON_CONTEXT."""

    def __init__(self) -> None:
        self.stack: list[Context] = [Context()]

    def attach(self, context: Context) -> Token[Context]:
        self.stack.append(context)
        return len(self.stack) - 1  # type: ignore[return-value]

    def get_current(self) -> Context:
        return self.stack[-1]

    def detach(self, token: Token[Context]) -> None:
        del self.stack[int(token) :]  # type: ignore[call-overload]


@pytest.fixture
def other_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[_DictRuntimeContext]:
    runtime = _DictRuntimeContext()
    monkeypatch.setattr(context_api, "_RUNTIME_CONTEXT", runtime)
    yield runtime


def test_another_runtime_context_is_used_through_the_api(
    tracer: trace.Tracer, other_runtime: _DictRuntimeContext
) -> None:
    assert runtime_context_var() is None
    spans = TaskSpans(tracer)
    request: dict[str, Any] = {"id": "id-2"}
    span = spans.begin("id-2", TASK, request)
    assert span is not None
    assert len(other_runtime.stack) == 2
    assert trace.get_current_span() is span
    spans.end("id-2", TASK, "SUCCESS", request)
    assert other_runtime.stack == [Context()]
