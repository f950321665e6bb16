"""Trace-id exemplars: a slow task's latency bucket links to its trace, up to a real Prometheus.

A traced notifier worker with metrics on, on a prefork pool whose children are recycled every two
tasks, runs webhook deliveries published inside upstream spans; one delivery is slow. Its
runtime bucket must carry that delivery's trace id, through the children's exemplar files, the
OpenMetrics exposition and a real Prometheus with exemplar storage.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, format_trace_id
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tasklane.contracts import SEND_IM
from tasklane.observability.exemplars import FILE_PREFIX
from tasklane.observability.tracing import start_tracing, stop_tracing
from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, WebhookSink, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess
from tests.support.otlp import OtlpReceiver, forget_global_provider

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("broker", ["redis"], indirect=True)]

PROMETHEUS = Path("/usr/bin/prometheus")
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
RUNTIME = "tasklane_task_runtime_seconds"
WAIT = "tasklane_task_queue_wait_seconds"


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerProvider]:
    """This test process traced as an upstream service (its spans go to its own receiver)."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        provider = start_tracing("upstream")
        assert provider is not None
        yield provider
        stop_tracing(provider)
        forget_global_provider()


@pytest.fixture
def exemplar_worker(broker: BrokerEnv, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A traced notifier worker with metrics on; its metrics port and multiprocess directory."""
    port, files = free_port(), tmp_path / "metrics"
    with OtlpReceiver() as receiver:
        env = {
            **broker.env(),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "TASKLANE_METRICS_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(files),
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
        }
        log = tmp_path / "worker.log"
        worker = WorkerProcess.recycling("notifier", env, log, max_tasks_per_child=2)
        try:
            worker.wait_ready()
            yield port, files
        finally:
            worker.stop()


def _deliver(publisher: Publisher, sink: WebhookSink, text: str) -> str:
    """Publish one webhook delivery inside an upstream span, wait for it; the trace id."""
    tracer = trace.get_tracer("tests.upstream")
    with tracer.start_as_current_span("upstream request", kind=SpanKind.SERVER) as root:
        handle = publisher.publish(SEND_IM, {"channel": "webhook", "url": sink.url, "text": text})
    assert handle.get(timeout=20).status_code == 200
    return format_trace_id(root.get_span_context().trace_id)


def _scrape(port: int, accept: str) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def _buckets(body: str, name: str) -> list[Sample]:
    families = {f.name: f for f in text_string_to_metric_families(body)}
    return [s for s in families[name].samples if s.name == f"{name}_bucket"]


def _exemplar_traces(body: str, name: str) -> dict[str, str]:
    """``le`` → trace id of each bucket of ``name`` (notifier.im.send) that has an exemplar."""
    return {
        s.labels["le"]: s.exemplar.labels["trace_id"]
        for s in _buckets(body, name)
        if s.exemplar is not None and s.labels["task"] == SEND_IM.name
    }


def _exemplar_of(body: str, name: str, trace_id: str) -> tuple[float, float]:
    """(bucket bound, observed value) of the exemplar of ``name`` that carries ``trace_id``."""
    for sample in _buckets(body, name):
        if sample.exemplar is not None and sample.exemplar.labels["trace_id"] == trace_id:
            return float(sample.labels["le"]), sample.exemplar.value
    raise AssertionError(f"no {name} bucket carries trace {trace_id}")


def test_a_slow_tasks_bucket_links_to_its_trace_across_recycled_children(
    broker: BrokerEnv,
    exemplar_worker: tuple[int, Path],
    upstream: TracerProvider,
    webhook_sink: WebhookSink,
) -> None:
    port, files = exemplar_worker
    with Publisher(broker.settings) as publisher:
        fast = {_deliver(publisher, webhook_sink, f"fast {n}") for n in range(5)}
        webhook_sink.script(Reply(delay=0.6))
        slow = _deliver(publisher, webhook_sink, "slow")

    def with_slow_runtime() -> tuple[str, str] | None:
        # The slow run's runtime is recorded as its tracer returns, after its result is stored.
        scraped = _scrape(port, OPENMETRICS)
        return scraped if slow in _exemplar_traces(scraped[1], RUNTIME).values() else None

    content_type, body = eventually(
        with_slow_runtime, timeout=10, message="the slow task's runtime exemplar"
    )
    assert content_type.startswith("application/openmetrics-text")
    runtime = _exemplar_traces(body, RUNTIME)
    # The slow delivery ran last, so the bucket its runtime fell in (1 s on a quiet machine, a
    # higher one under load) holds its exemplar, and that bucket's bound is above its value.
    bound, value = _exemplar_of(body, RUNTIME, slow)
    assert 0.6 <= value <= bound
    assert set(runtime.values()) <= fast | {slow}
    assert len(runtime) >= 2  # the fast ones' bucket too
    # Queue wait exemplars come from the message's traceparent: the same traces.
    wait = _exemplar_traces(body, WAIT)
    assert wait and set(wait.values()) <= fast | {slow}
    # Six tasks on children recycled every two: exited children's files were folded and removed.
    assert len(list(files.glob(f"{FILE_PREFIX}*.json"))) <= 2

    # The classic text format has no exemplars, and the counts are the same.
    plain_type, plain = _scrape(port, "text/plain")
    assert plain_type.startswith("text/plain")
    assert "trace_id" not in plain
    assert "trace_id" in body


def _prometheus(tmp: Path, target: int) -> tuple[WorkerProcess, str]:
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "notifier",
                        "static_configs": [{"targets": [f"127.0.0.1:{target}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    command = [
        str(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    return WorkerProcess.from_command(
        command, {}, tmp / "prometheus.log"
    ), f"http://127.0.0.1:{port}"


def _query_exemplars(url: str, query: str) -> list[dict[str, Any]]:
    now = time.time()
    params = urllib.parse.urlencode({"query": query, "start": now - 600, "end": now + 60})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_exemplars?{params}", timeout=5) as answer:
            return list(json.load(answer)["data"])
    except OSError:
        return []  # not up yet


def test_prometheus_stores_the_exemplar_that_links_the_slow_task_to_its_trace(
    broker: BrokerEnv,
    exemplar_worker: tuple[int, Path],
    upstream: TracerProvider,
    webhook_sink: WebhookSink,
    tmp_path: Path,
) -> None:
    if not PROMETHEUS.exists():
        if os.environ.get("TASKLANE_REQUIRE_PROMTOOL"):
            pytest.fail(f"{PROMETHEUS} is required (Debian package prometheus)")
        pytest.skip(f"{PROMETHEUS} not installed: apt-get install prometheus")
    port, _ = exemplar_worker
    prometheus, url = _prometheus(tmp_path, port)
    try:
        with Publisher(broker.settings) as publisher:
            webhook_sink.script(Reply(delay=0.6))
            slow = _deliver(publisher, webhook_sink, "slow")
        # Every bucket: how long the slow delivery took decides its bucket (under load, past 1 s).
        query = f'{RUNTIME}_bucket{{task="{SEND_IM.name}"}}'

        def slow_exemplar() -> tuple[float, float] | None:
            for series in _query_exemplars(url, query):
                for exemplar in series["exemplars"]:
                    if exemplar["labels"]["trace_id"] == slow:
                        return float(series["seriesLabels"]["le"]), float(exemplar["value"])
            return None

        found = eventually(
            slow_exemplar,
            timeout=30,
            interval=0.5,
            message=lambda: f"trace {slow} among the exemplars\n{prometheus.output()[-2000:]}",
        )
        bound, value = found
        assert 0.6 <= value <= bound
    finally:
        prometheus.stop()
