"""OpenTelemetry traces, configured by the standard ``OTEL_*`` variables and nothing else.

Off unless an OTLP endpoint is set; OTel's global tracer provider is the one global state this
module sets.
Design: docs/observability.md#traces.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celery import signals
from opentelemetry import trace

from tasklane.errors import SettingsError

if TYPE_CHECKING:
    from opentelemetry.instrumentation.httpx import RequestInfo
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from tasklane.observability.runs import RunObservers

logger = logging.getLogger(__name__)

#: Either turns tracing on; the traces-specific one wins in the exporter, as the spec says.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_SUPPORTED_PROTOCOL = "http/protobuf"
_SAMPLER = "OTEL_TRACES_SAMPLER"
_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
#: The samplers that read a ratio from ``OTEL_TRACES_SAMPLER_ARG``.
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
_SERVICE_NAME = "service.name"
#: What a traced process imports; a prefork parent imports it once for all its children.
_SDK_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.instrumentation.httpx",
    "tasklane.observability.sampling",
    "tasklane.observability.span_export",
    "tasklane.observability.task_spans",
)


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables (of ``environ``, else this process) turn tracing on."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def check_tracing_settings(environ: Mapping[str, str] | None = None) -> None:
    """Refuse ``OTEL_*`` values this build cannot honour, so a worker stops instead of going dark.

    Raises:
        SettingsError: an exporter other than ``otlp``/``none``, or a protocol other than
            ``http/protobuf`` (the gRPC exporter is not installed).
    """
    env = os.environ if environ is None else environ
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter not in ("otlp", "none"):
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER={exporter!r}: only 'otlp' (OTLP/HTTP) or 'none' are supported"
        )
    protocols = [(name, env.get(name, "").strip().lower()) for name in _PROTOCOL_VARIABLES]
    name, protocol = next(((n, p) for n, p in protocols if p), ("", _SUPPORTED_PROTOCOL))
    if protocol != _SUPPORTED_PROTOCOL:
        raise SettingsError(f"{name}={protocol!r}: only {_SUPPORTED_PROTOCOL!r} is supported")
    _sampling_ratio(env)


def _sampling_ratio(env: Mapping[str, str]) -> float | None:
    """``OTEL_TRACES_SAMPLER_ARG`` when the sampler reads a ratio; ``None`` otherwise.

    The SDK would trace every span, with a log line, when the ratio is not a number in [0, 1]:
    a typo must not turn a 1 % sampling into 100 %.
    """
    if env.get(_SAMPLER, "").strip().lower() not in _RATIO_SAMPLERS:
        return None
    text = env.get(_SAMPLER_ARG, "").strip()
    try:
        ratio = float(text) if text else 1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise SettingsError(f"{_SAMPLER_ARG}={text!r}: a sampling ratio from 0 to 1 is expected")
    return ratio


def service_resource(service: str) -> Resource:
    """This process's resource, from ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``.

    Named ``tasklane-<service>`` when those leave ``service.name`` unset, so that every service
    is told apart without configuration.
    """
    from opentelemetry.sdk.resources import Resource

    detected = Resource.create()
    if str(detected.attributes.get(_SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({_SERVICE_NAME: f"tasklane-{service}"}))
    return detected


def start_tracing(service: str) -> TracerProvider | None:
    """Export this process's spans as ``OTEL_*`` says; ``None``, and nothing installed, when off.

    For any process that publishes or runs tasks: upstream services call it once at start-up;
    workers get it from :func:`install_tracing`. Call it after forking, never before: the
    exporter's thread and connections belong to the process that made them.

    Raises:
        SettingsError: see :func:`check_tracing_settings`.
    """
    if not tracing_enabled():
        return None
    check_tracing_settings()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tasklane.observability.sampling import TraceIdsDrawnAhead
    from tasklane.observability.span_export import SpanExporter

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        logger.warning("tracing already started in this process; keeping the first provider")
        return None
    provider = TracerProvider(
        resource=service_resource(service),
        sampler=_sampler_from_env(),
        id_generator=TraceIdsDrawnAhead(),
    )
    provider.add_span_processor(BatchSpanProcessor(SpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def _sampler_from_env() -> Sampler | None:
    """``parentbased_traceidratio`` as :class:`ParentBasedTraceIdRatio`; ``None``: the SDK reads
    ``OTEL_TRACES_SAMPLER`` itself."""
    if os.environ.get(_SAMPLER, "").strip().lower() != "parentbased_traceidratio":
        return None
    from tasklane.observability.sampling import ParentBasedTraceIdRatio

    ratio = _sampling_ratio(os.environ)
    return ParentBasedTraceIdRatio(1.0 if ratio is None else ratio)


def stop_tracing(provider: TracerProvider | None) -> None:
    """Export the spans still queued and close the exporter.

    Pool children leave through ``os._exit``, which skips the SDK's own ``atexit`` flush.
    """
    if provider is not None:
        provider.shutdown()


def _url_origin(span: trace.Span, request: RequestInfo) -> None:
    """httpx request hook: keep only scheme, host and port of the URL on the span.

    Webhook URLs carry their credentials (DingTalk's ``access_token`` query, Slack's path), and
    traces are read by more people than the secrets are.
    """
    import httpx

    if not span.is_recording():
        return
    url = request.url if isinstance(request.url, httpx.URL) else httpx.URL(str(request.url))
    origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
    recorded = getattr(span, "attributes", None) or {}
    for key in ("http.url", "url.full"):  # old and stable HTTP conventions
        if key in recorded:
            span.set_attribute(key, origin)


def _instrument_worker(runs: RunObservers) -> None:
    """Trace task runs and publishes (Celery) and outgoing HTTP (httpx) in this process.

    ``runs`` start and end each run's span.
    """
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    from tasklane.observability.task_spans import TaskSpans

    spans = TaskSpans()
    spans.connect(runs=False)
    runs.spans = spans  # read by every task's tracer from its next run on
    HTTPXClientInstrumentor().instrument(request_hook=_url_origin)


def _pool_forks_children(worker: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    pool = get_implementation(getattr(worker, "pool_cls", None) or "prefork")
    return isinstance(pool, type) and issubclass(pool, TaskPool)


class _WorkerTracing:
    """Celery signal handlers: start tracing in each process that runs tasks, flush it at exit.

    Under prefork the main process runs no task and stays untraced: a provider made there would be
    inherited by every child forked later, and a child could not replace it (the global provider
    is set once per process). Each child starts its own after the fork (``worker_process_init``);
    the parent only imports the SDK, so that children share the modules instead of each spending
    half a second importing them. Other pools (solo, threads, gevent) run tasks in the main
    process, which starts tracing at ``worker_init``.
    """

    def __init__(self, service: str, runs: RunObservers) -> None:
        self.service = service
        self.runs = runs
        self.provider: TracerProvider | None = None
        self.pid: int | None = None  # the process that started tracing

    def worker_init(self, sender: Any = None, **_: Any) -> None:
        if _pool_forks_children(sender):
            for module in _SDK_MODULES:
                importlib.import_module(module)
        else:
            self.start()

    def start(self, **_: Any) -> None:
        if self.pid == os.getpid():
            return  # the solo pool sends worker_process_init in the main process too
        self.pid = os.getpid()
        self.provider = start_tracing(self.service)
        _instrument_worker(self.runs)
        logger.info("tracing on in process %d", self.pid)

    def stop(self, **_: Any) -> None:
        if self.pid == os.getpid():
            stop_tracing(self.provider)
            self.provider = None


def install_tracing(service: str, runs: RunObservers) -> bool:
    """Trace this process's worker when ``OTEL_*`` turns tracing on; whether it did.

    Only signal handlers are connected here; providers start in the worker's processes.
    ``runs`` are the app's run observers, which then start and end each run's span.

    Raises:
        SettingsError: see :func:`check_tracing_settings`; checked now so the worker fails to
            start rather than run untraced.
    """
    if not tracing_enabled():
        return False
    check_tracing_settings()
    runs.enabled = True  # each process's spans are set once its tracing starts
    hooks = _WorkerTracing(service, runs)  # kept alive by the signals (weak=False)
    signals.worker_init.connect(hooks.worker_init, weak=False)
    signals.worker_process_init.connect(hooks.start, weak=False)
    signals.worker_process_shutdown.connect(hooks.stop, weak=False)
    signals.worker_shutdown.connect(hooks.stop, weak=False)
    return True
