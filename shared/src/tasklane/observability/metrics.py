"""Worker metrics for Prometheus, correct under the prefork pool.

Every process of a worker records into prometheus-client's multiprocess files; the main process
aggregates them and serves ``/metrics`` on ``TASKLANE_METRICS_PORT``. Tasks in flight are read at
each scrape from the main process's own record of the requests its pool runs, so a pool child
writes nothing for them.
Design: docs/observability.md#worker-metrics.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, MutableMapping
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.states import SUCCESS
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    CollectorRegistry,
    Counter,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tasklane.contracts import TaskContract
from tasklane.observability.counters import (
    DEAD_LETTER_REASONS,
    IN_FLIGHT,
    QUEUE_WAIT,
    RECEIVED,
    RUNTIME,
    RUNTIME_BUCKETS,
    STARTED,
    TASK_LABELS,
    WAIT_BUCKETS,
    task_metrics,
)
from tasklane.observability.exemplars import ExemplarCollector, ExemplarRecorder, clear
from tasklane.observability.health import HealthStep, Probes, WorkerHealth
from tasklane.observability.runs import RunObservers
from tasklane.observability.tallies import RunSeries, Tallies
from tasklane.observability.tracing import tracing_enabled
from tasklane.wire.headers import PUBLISHED_AT
from tasklane.wire.routing import queue_name

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A publish time the queue wait is taken from (a tuple: ``int | float`` is made at each call).
_NUMBER = (int, float)


def _labels(task: Any) -> tuple[str, str]:
    name = str(getattr(task, "name", "") or "unknown")
    queue = str(getattr(task, "queue", "") or "unknown")
    return name, queue


def _request_labels(request: Any) -> tuple[str, str]:
    name = str(getattr(request, "name", None) or getattr(request, "task_name", "") or "unknown")
    info = getattr(request, "delivery_info", None) or {}
    queue = str(info.get("routing_key") or "unknown")
    return name, queue


class _RunSeries(RunSeries):
    """The series one task's runs record into, looked up once per task and process."""

    __slots__ = ("labels",)

    def __init__(self, recorder: TaskRecorder, labels: tuple[str, str]) -> None:
        metrics = task_metrics()
        super().__init__(
            succeeded=recorder._child(metrics.succeeded, labels),
            queue_wait=recorder._child(metrics.queue_wait, labels),
            runtime=recorder._child(metrics.runtime, labels),
        )
        self.labels = labels


#: What :meth:`TaskRecorder.begin` hands on to :meth:`TaskRecorder.end`: the task's series, its
#: queue wait (``None``: the message has no publish time) and when it started (monotonic).
_Run = tuple[_RunSeries, float | None, float]


class TaskRecorder:
    """Records :class:`TaskMetrics`: a run's own around it, the rest from Celery's signals."""

    def __init__(
        self,
        service: str,
        port: int,
        health: WorkerHealth,
        labels: list[tuple[str, str]],
        exemplars: bool,
        address: IPv4Address | IPv6Address | str = "0.0.0.0",
    ) -> None:
        self.service = service
        self.port = port
        self.address = address
        self.health = health
        self.labels = labels
        self.exemplars = exemplars
        self._recorder: ExemplarRecorder | None = None
        #: Labelled series by metric and label values: ``labels()`` costs a lock and a
        #: conversion of every value on each call, several times per task.
        self._series: dict[tuple[MetricWrapperBase, tuple[str, str]], Any] = {}
        self._runs: dict[Any, _RunSeries] = {}
        #: How tasks ended, their waits and runtimes: summed in memory, written in batches.
        self.tallies = Tallies()
        self.received_counts = ReceivedCounter(labels)

    def _child(self, metric: MetricWrapperBase, labels: tuple[str, str]) -> Any:
        """``metric.labels(*labels)``, looked up once per series (the same object each time)."""
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def worker_init(self, **_: Any) -> None:
        directory = os.environ.get(MULTIPROC_ENV)
        registry = CollectorRegistry()
        registry.register(InFlightCollector(self.labels))
        registry.register(StartedCounter(self.labels))
        registry.register(self.received_counts)
        if directory:
            # Files of an earlier run of this worker would add its counts to this one's.
            path = Path(directory)
            for child in path.glob("*.db"):
                child.unlink(missing_ok=True)
            clear(path)
            inner = multiprocess.MultiProcessCollector(None, path=directory)
            registry.register(ExemplarCollector(inner, path))
        serve_endpoints(self.port, registry, self.health, self.address)
        self._zero_series()
        task_metrics().worker_up.labels(self.service).set(1)

    def _zero_series(self) -> None:
        # A counter that first appears at 1 hides that first event from rate() and increase():
        # every series of this service's contracts exists from the start, at 0.
        metrics = task_metrics()
        for task, queue in self.labels:
            for counter in (
                metrics.succeeded,
                metrics.failed,
                metrics.retried,
                metrics.revoked,
                metrics.rejected,
            ):
                counter.labels(task, queue)
            for reason in DEAD_LETTER_REASONS:
                metrics.dead_lettered.labels(task, queue, reason)

    def _exemplar_recorder(self) -> ExemplarRecorder | None:
        """This process's exemplar file, when tracing is on (made after the pool forked)."""
        recorder = self._recorder
        if recorder is not None and recorder.pid == os.getpid():
            return recorder
        directory = os.environ.get(MULTIPROC_ENV)
        if not self.exemplars or not directory:
            return None
        self._recorder = ExemplarRecorder(Path(directory))
        return self._recorder

    def _run_series(self, task: Any) -> _RunSeries:
        series = self._runs.get(task)
        if series is None:
            series = self._runs[task] = _RunSeries(self, _labels(task))
        return series

    def _exemplar(
        self,
        name: str,
        buckets: tuple[float, ...],
        labels: tuple[str, str],
        value: float,
        trace_ids: tuple[str, str],
    ) -> None:
        recorder = self._exemplar_recorder()
        if recorder is not None:
            named = dict(zip(TASK_LABELS, labels, strict=True))
            recorder.observe(name, named, buckets, value, *trace_ids)

    def begin(self, task: Any, request: Mapping[str, Any]) -> _Run:
        """A run of ``task`` starts (``request`` is its message's request)."""
        series = self._runs.get(task)
        if series is None:
            series = self._run_series(task)
        wait = None
        published = request.get(PUBLISHED_AT)
        if isinstance(published, _NUMBER) and published > 0:
            wait = max(0.0, time.time() - published)
            # The task's own span starts after this; its trace is the publisher's. Most
            # messages carry none.
            traceparent = request.get("traceparent") if self.exemplars else None
            if traceparent is not None:
                parent = _sampled_parent(traceparent)
                if parent is not None:
                    self._exemplar(QUEUE_WAIT, WAIT_BUCKETS, series.labels, wait, parent)
        # That it started is counted by the main process (StartedCounter), not here.
        return series, wait, time.monotonic()

    def end(self, run: _Run, state: Any, span: trace.Span | None) -> None:
        """A run ended in ``state``; ``span`` is its span when it records (its runtime's
        exemplar)."""
        series, wait, started = run
        runtime = time.monotonic() - started
        # Counted here rather than on task_success: a signal without receivers is not sent at
        # all, which saves every task a dispatch. Failures and retries keep their own signals.
        self.tallies.record((series, wait, runtime, state == SUCCESS))
        if span is not None and self.exemplars:
            ids = _sampled_ids(span)
            if ids is not None:
                self._exemplar(RUNTIME, RUNTIME_BUCKETS, series.labels, runtime, ids)

    def failure(self, sender: Any = None, **_: Any) -> None:
        self._child(task_metrics().failed, _labels(sender)).inc()

    def retry(self, sender: Any = None, **_: Any) -> None:
        self._child(task_metrics().retried, _labels(sender)).inc()

    def revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        # Sent by the worker's main process, for a revoked id or an expired message it dropped;
        # ``request`` is the message's context there, which holds no task name: the sender does.
        queue = _request_labels(request)[1]
        name = str(getattr(sender, "name", "") or "unknown")
        self._child(task_metrics().revoked, (name, queue)).inc()

    def child_exit(self, **_: Any) -> None:
        # What the process summed and its exemplars, written before it goes. No live gauge is
        # kept by a pool process, so there is no file of one to drop.
        self.tallies.stop()
        if self._recorder is not None:
            self._recorder.write()


class InFlightCollector(Collector):
    """``tasklane_tasks_in_flight``, read from the worker's record of the requests it runs.

    Celery's main process adds a request to ``celery.worker.state.active_requests`` when a pool
    process accepts it and removes it when it ends, however it ends: a pool child killed by
    SIGKILL (hard time limit, OOM killer) included. Reading that at each scrape costs the tasks
    nothing, where a gauge kept by the pool children cost two writes a task.
    """

    def __init__(self, labels: Iterable[tuple[str, str]]) -> None:
        #: The service's own series, reported at 0 when idle.
        self.labels = list(labels)

    def collect(self) -> Iterable[Metric]:
        from celery.worker import state

        # The scrape runs on the server's thread while the main loop changes the set; copying it
        # runs in C without giving up the GIL, so it sees the set whole.
        running = collections.Counter(_request_labels(r) for r in list(state.active_requests))
        family = GaugeMetricFamily(IN_FLIGHT, "Tasks running now.", labels=TASK_LABELS)
        for labels in dict.fromkeys([*self.labels, *running]):
            family.add_metric(list(labels), running.get(labels, 0))
        yield family


class StartedCounter(Collector):
    """``tasklane_tasks_started_total``, read from Celery's own count of the tasks it started.

    The worker's main process counts, by task name, every request a pool process accepted, as
    the pool reports it and before the task runs (``celery.worker.state.total_count``). That
    count costs the tasks nothing more, where a counter kept by the pool children cost each run
    a locked file write; and it is kept by the process no task runs in, so a pool child killed
    mid-run (SIGKILL: hard time limit, OOM killer) has been counted.
    """

    def __init__(self, labels: Iterable[tuple[str, str]]) -> None:
        #: The service's own series, at 0 from the start; a task's queue by its name.
        self.labels = list(labels)
        self._queues = dict(self.labels)

    def collect(self) -> Iterable[Metric]:
        from celery.worker import state

        # Copied in C without giving up the GIL: the scrape's thread sees the counts whole.
        accepted = dict(state.total_count)
        counts = dict.fromkeys(self.labels, 0)
        for name, count in accepted.items():
            labels = (name, self._queues.get(name, "unknown"))
            counts[labels] = counts.get(labels, 0) + count
        family = CounterMetricFamily(STARTED, "Tasks that started running.", labels=TASK_LABELS)
        for labels, count in counts.items():
            family.add_metric(list(labels), count)
        yield family


class ReceivedCounter(Collector):
    """``tasklane_tasks_received_total``, kept in the memory of the process that receives.

    Tasks are received by the worker's main process (its consumer), the one that also serves
    ``/metrics``: the count needs no file, where a multiprocess counter cost the busiest process
    a locked file write per task. The consumer adds each message for a task it knows as it takes
    it from its queue (:class:`tasklane.worker.consumer.DeadLetteringConsumer`), one revoked or
    expired on arrival included (it is counted as revoked too).
    """

    def __init__(self, labels: Iterable[tuple[str, str]]) -> None:
        #: The service's own series, at 0 from the start.
        self._counts = dict.fromkeys(labels, 0)

    def add(self, labels: tuple[str, str]) -> None:
        """One more task received (called from the consumer's thread alone)."""
        self._counts[labels] = self._counts.get(labels, 0) + 1

    def collect(self) -> Iterable[Metric]:
        # Copied in C without giving up the GIL: the scrape's thread sees the counts whole.
        counts = dict(self._counts)
        family = CounterMetricFamily(
            RECEIVED, "Tasks a worker received from its queue.", labels=TASK_LABELS
        )
        for labels, count in counts.items():
            family.add_metric(list(labels), count)
        yield family


def _sampled_parent(traceparent: Any) -> tuple[str, str] | None:
    """Trace and span id of a W3C ``traceparent`` header, if its trace is sampled."""
    if not isinstance(traceparent, str):
        return None
    context = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    ).get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def _sampled_ids(span: trace.Span) -> tuple[str, str] | None:
    """Trace and span id of ``span``, if it is sampled."""
    # SpanContext's fields read as the tuple it is: its properties are a Python call each.
    trace_id, span_id, _, flags, _, valid = span.get_span_context()
    if not valid or not flags & trace.TraceFlags.SAMPLED:
        return None
    return f"{trace_id:032x}", f"{span_id:016x}"  # trace.format_trace_id, format_span_id


def record_dead_letter(task: str, queue: str, reason: str) -> None:
    """Count one dead-lettered message (called where messages are dead-lettered)."""
    metrics = task_metrics()
    metrics.dead_lettered.labels(task, queue, reason).inc()
    if reason == "invalid-payload":
        metrics.rejected.labels(task, queue).inc()


def install_metrics(
    app: Celery,
    service: str,
    contracts: Iterable[TaskContract[Any, Any]],
    namespace: str,
    port: int,
    live_timeout: float,
    runs: RunObservers,
    address: IPv4Address | IPv6Address | str = "0.0.0.0",
) -> tuple[WorkerHealth, TaskRecorder]:
    """Record task metrics in this app's worker; serve them and its probes on ``port``.

    ``contracts`` are the app's own: their series start at zero before the first task.
    ``runs`` are the app's run observers, which start and end each run's metrics around it.
    """
    health = WorkerHealth(live_timeout=live_timeout)
    app.steps["consumer"].add(HealthStep)
    labels = [(c.name, queue_name(c, namespace)) for c in contracts]
    recorder = TaskRecorder(
        service, port, health, labels, exemplars=tracing_enabled(), address=address
    )
    signals.worker_init.connect(recorder.worker_init, weak=False)
    runs.metrics = recorder
    runs.enabled = True
    signals.task_failure.connect(recorder.failure, weak=False)
    signals.task_retry.connect(recorder.retry, weak=False)
    signals.task_revoked.connect(recorder.revoked, weak=False)
    signals.worker_process_shutdown.connect(recorder.child_exit, weak=False)
    return health, recorder


def serve_endpoints(
    port: int,
    registry: CollectorRegistry,
    health: Probes,
    address: IPv4Address | IPv6Address | str = "0.0.0.0",
) -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/livez`` and ``/readyz`` from a thread of this process.

    ``health`` answers the probes from memory (a worker's or Beat's), never from the broker.
    ``address`` is ``TASKLANE_METRICS_ADDRESS``: IPv4 or IPv6 (``::`` takes both on Linux).
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                # OpenMetrics when the scraper asks for it (Prometheus does): it carries exemplars.
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._answer(200, encoder(registry), content_type)
            elif path in ("/livez", "/readyz"):
                ok, why = health.live() if path == "/livez" else health.ready()
                self._answer(200 if ok else 503, f"{why}\n".encode(), "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the process's log

    host = ip_address(str(address))
    server_class = _IPv6Server if host.version == 6 else ThreadingHTTPServer
    server = server_class((str(host), port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="tasklane-metrics", daemon=True).start()
    logger.info("metrics and probes on %s", _url(host, port))
    return server


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _url(host: IPv4Address | IPv6Address, port: int) -> str:
    return (
        f"http://[{host}]:{port}/metrics" if host.version == 6 else f"http://{host}:{port}/metrics"
    )


def prepare_multiproc_dir(environ: MutableMapping[str, str], base: Path | None = None) -> str:
    """Make (or empty) the multiprocess directory a worker about to start will use."""
    directory = environ.get(MULTIPROC_ENV)
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return directory
    import tempfile

    made = tempfile.mkdtemp(prefix="tasklane-metrics-", dir=base)
    environ[MULTIPROC_ENV] = made
    return made


@cache
def service_counter(name: str, documentation: str, labels: tuple[str, ...]) -> Counter:
    """A service's own counter (one object per process, whoever asks first creates it).

    Label values must come from a fixed set (statuses, outcomes, limit names), never from
    payloads, URLs or ids.
    """
    return Counter(name, documentation, labels)
