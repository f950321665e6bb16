"""Traces end to end: real notifier workers exporting over OTLP/HTTP to a real local receiver.

The test process plays an upstream service, traced through
:func:`tasklane.observability.tracing.start_tracing`
like a real one, so its spans reach the same receiver as the workers'. One traced worker per
broker serves every traced test of the module (starting and stopping one is most of a test's
time); each test asserts on its own trace only.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.messaging import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, format_trace_id

from tasklane.beat.client import Schedules
from tasklane.beat.models import IntervalSchedule, ScheduleEntry
from tasklane.contracts import SEND_EMAIL, SEND_IM
from tasklane.errors import SettingsError
from tasklane.observability.tracing import (
    check_tracing_settings,
    service_resource,
    start_tracing,
    stop_tracing,
    tracing_enabled,
)
from tasklane.publish import Publisher, TaskHandle
from tasklane_dev.sinks import Reply, SmtpSink, WebhookSink
from tests.support.harness import (
    RABBITMQ_URL,
    BrokerEnv,
    WorkerProcess,
    cleanup,
    rabbitmq_reachable,
)
from tests.support.otlp import OtlpReceiver, ReceivedSpan, forget_global_provider

StartWorker = Callable[..., WorkerProcess]
RUN_IM = f"run/{SEND_IM.name}"
RUN_EMAIL = f"run/{SEND_EMAIL.name}"


@pytest.fixture(scope="module", autouse=True)
def _clean_module_environment() -> Iterator[None]:
    # A developer's OTEL_* and TASKLANE_* variables must reach neither this process nor its
    # workers; the shared workers start before conftest's per-test clean-up runs. The CI switch
    # that makes a missing RabbitMQ fail is a test setting, kept.
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name == "TASKLANE_REQUIRE_RABBITMQ":
                continue
            if name.startswith(("OTEL_", "TASKLANE_")) or name == "REDIS_URL":
                patch.delenv(name)
        yield


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


def _traced_env(receiver: OtlpReceiver) -> dict[str, str]:
    # 200 ms instead of the default 5 s between exports, so spans arrive while the test waits.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}


@dataclass(frozen=True)
class TracedWorker:
    """A notifier worker exporting to :func:`receiver`, its broker and its SMTP sink."""

    broker: BrokerEnv
    worker: WorkerProcess
    smtp: SmtpSink


def _module_broker(kind: str, redis_url: str) -> BrokerEnv:
    # As conftest's function-scoped ``broker`` fixture, for a worker shared by the module.
    if kind == "rabbitmq" and not rabbitmq_reachable():
        if os.environ.get("TASKLANE_REQUIRE_RABBITMQ"):
            pytest.fail(f"RabbitMQ is required but does not answer at {RABBITMQ_URL}")
        pytest.skip(f"RabbitMQ does not answer at {RABBITMQ_URL}")
    url = redis_url if kind == "redis" else RABBITMQ_URL
    return BrokerEnv(kind, url, redis_url, f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def traced(
    request: pytest.FixtureRequest,
    redis_url: str,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TracedWorker]:
    """A traced notifier worker on each broker, shared by the traced tests."""
    broker = _module_broker(request.param, redis_url)
    with SmtpSink() as smtp:
        env = {
            **broker.env(),
            **_traced_env(receiver),
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp.port),
            "TASKLANE_NOTIFIER_WEBHOOK_TIMEOUT": "2",
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",  # the webhook sinks' address
        }
        log = tmp_path_factory.mktemp("traced") / "worker.log"
        worker = WorkerProcess("notifier", env, log, concurrency=2)
        try:
            worker.wait_ready()
            yield TracedWorker(broker, worker, smtp)
        finally:
            worker.stop()
            cleanup(broker)


@pytest.fixture
def upstream(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerProvider]:
    """This process traced as the upstream service ``tasklane-upstream``, undone afterwards."""
    for name, value in _traced_env(receiver).items():
        monkeypatch.setenv(name, value)
    provider = start_tracing("upstream")
    assert provider is not None
    yield provider
    stop_tracing(provider)
    forget_global_provider()


def _im(sink: WebhookSink, text: str = "traced") -> dict[str, Any]:
    # The query stands in for DingTalk's access_token: it must not reach any span.
    return {"channel": "webhook", "url": f"{sink.url}/hook?access_token=s3cret", "text": text}


def _in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def _all(spans: list[ReceivedSpan], kind: str, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind and s.name == name]


def _one(spans: list[ReceivedSpan], kind: str, name: str) -> ReceivedSpan:
    found = _all(spans, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} spans named {name!r}: {found}"
    return found[0]


def _wait_trace(
    receiver: OtlpReceiver, trace_id: str, *wanted: tuple[str, str, int]
) -> list[ReceivedSpan]:
    """The spans of ``trace_id`` once it holds ``count`` spans of each ``(kind, name, count)``."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = _in_trace(spans, trace_id)
        return all(len(_all(mine, kind, name)) >= count for kind, name, count in wanted)

    return _in_trace(receiver.wait_for(complete), trace_id)


def _from_upstream(
    traced: TracedWorker,
    upstream: TracerProvider,
    send: Callable[[Publisher], TaskHandle[Any] | Sequence[TaskHandle[Any]]],
    timeout: float = 20,
) -> tuple[list[TaskHandle[Any]], list[Any], str]:
    """Publish with ``send`` inside an upstream SERVER span: the handles, results and trace id."""
    with Publisher(traced.broker.settings) as publisher:
        tracer = trace.get_tracer("tests.upstream")
        with tracer.start_as_current_span("upstream request", kind=SpanKind.SERVER) as root:
            sent = send(publisher)
        handles = [sent] if isinstance(sent, TaskHandle) else list(sent)
        results = [handle.get(timeout=timeout) for handle in handles]
    upstream.force_flush()
    return handles, results, format_trace_id(root.get_span_context().trace_id)


def _http_url(span: ReceivedSpan) -> Any:
    return span.attributes.get("http.url", span.attributes.get("url.full"))


def test_otel_variables_alone_switch_and_shape_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not tracing_enabled({})
    assert tracing_enabled(endpoint)
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/t"})
    assert not tracing_enabled({**endpoint, "OTEL_SDK_DISABLED": "TRUE"})
    assert not tracing_enabled({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    check_tracing_settings({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})  # fmt: skip
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        check_tracing_settings({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        check_tracing_settings({**endpoint, "OTEL_TRACES_EXPORTER": "zipkin"})
    ratio = {**endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    for good in ("0", "0.1", "1", ""):
        check_tracing_settings({**ratio, "OTEL_TRACES_SAMPLER_ARG": good})
    for bad in ("10%", "1.5", "-0.1"):
        # The SDK would sample every span instead, with a log line.
        with pytest.raises(SettingsError, match=rf"^OTEL_TRACES_SAMPLER_ARG='{bad}': a sampling"):
            check_tracing_settings({**ratio, "OTEL_TRACES_SAMPLER_ARG": bad})
    assert service_resource("notifier").attributes["service.name"] == "tasklane-notifier"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    assert service_resource("notifier").attributes["deployment.environment"] == "staging"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "notifier-eu")
    assert service_resource("notifier").attributes["service.name"] == "notifier-eu"


def test_webhook_trace_runs_upstream_publish_task_http(
    traced: TracedWorker,
    receiver: OtlpReceiver,
    upstream: TracerProvider,
    webhook_sink: WebhookSink,
) -> None:
    broker = traced.broker
    (handle,), (result,), trace_id = _from_upstream(
        traced, upstream, lambda p: p.publish(SEND_IM, _im(webhook_sink))
    )
    assert result.status_code == 200

    spans = _wait_trace(receiver, trace_id, ("CONSUMER", RUN_IM, 1), ("CLIENT", "POST", 1),
                        ("PRODUCER", f"{SEND_IM.name} publish", 1))  # fmt: skip
    top = _one(spans, "SERVER", "upstream request")
    publish = _one(spans, "PRODUCER", f"{SEND_IM.name} publish")
    run = _one(spans, "CONSUMER", RUN_IM)
    http = _one(spans, "CLIENT", "POST")
    assert (publish.parent_span_id, run.parent_span_id, http.parent_span_id) == (
        top.span_id,
        publish.span_id,
        run.span_id,
    )
    assert publish.attributes == {
        "messaging.system": broker.kind,
        "messaging.destination.name": f"{broker.namespace}{SEND_IM.queue}",
        "messaging.operation": "publish",
        "messaging.operation.type": "send",
        "messaging.message.id": handle.id,
    }
    assert run.attributes["messaging.message.id"] == handle.id
    assert run.attributes["celery.task_name"] == SEND_IM.name
    assert (top.service, publish.service) == ("tasklane-upstream", "tasklane-upstream")
    assert (run.service, http.service) == ("tasklane-notifier", "tasklane-notifier")
    # The webhook saw the HTTP span's context, and its URL is cut to the origin on the span.
    (request,) = webhook_sink.requests
    assert request.headers["traceparent"].split("-")[1:3] == [trace_id, http.span_id]
    assert _http_url(http) == webhook_sink.url
    assert "s3cret" not in repr([s.attributes for s in spans])
    assert "tracing on in process" in traced.worker.output()


def test_task_log_lines_carry_the_trace_and_span_of_the_run(
    traced: TracedWorker,
    receiver: OtlpReceiver,
    upstream: TracerProvider,
    webhook_sink: WebhookSink,
) -> None:
    (handle,), _, trace_id = _from_upstream(
        traced, upstream, lambda p: p.publish(SEND_IM, _im(webhook_sink, "logged with its trace"))
    )
    run = _one(_wait_trace(receiver, trace_id, ("CONSUMER", RUN_IM, 1)), "CONSUMER", RUN_IM)
    # The worker writes JSON lines (its output is no terminal); the one saying the task
    # succeeded was written inside the task's own span.
    lines = [json.loads(line) for line in traced.worker.output().splitlines() if line[:1] == "{"]
    (done,) = [
        line
        for line in lines
        if line.get("task_id") == handle.id and "succeeded" in line["message"]
    ]
    assert (done["trace_id"], done["span_id"]) == (trace_id, run.span_id)
    assert (done["task_name"], done["attempt"]) == (SEND_IM.name, 1)


def test_email_trace_has_an_smtp_client_span_under_the_task(
    traced: TracedWorker, receiver: OtlpReceiver, upstream: TracerProvider
) -> None:
    email = {"to": ["ada@example.com"], "cc": ["bob@example.com"], "subject": "Hi", "text": "."}
    _, (result,), trace_id = _from_upstream(
        traced, upstream, lambda p: p.publish(SEND_EMAIL, email)
    )
    assert result.accepted == ["ada@example.com", "bob@example.com"]

    spans = _wait_trace(receiver, trace_id, ("CONSUMER", RUN_EMAIL, 1),
                        ("CLIENT", "smtp send", 1), ("SERVER", "upstream request", 1))  # fmt: skip
    publish = _one(spans, "PRODUCER", f"{SEND_EMAIL.name} publish")
    run = _one(spans, "CONSUMER", RUN_EMAIL)
    smtp = _one(spans, "CLIENT", "smtp send")
    assert (run.parent_span_id, smtp.parent_span_id) == (publish.span_id, run.span_id)
    assert smtp.attributes == {
        "server.address": "127.0.0.1",
        "server.port": traced.smtp.port,
        "smtp.recipients.count": 2,
    }
    assert smtp.service == "tasklane-notifier"
    assert "example.com" not in repr([s.attributes for s in spans])


def test_raw_protocol_message_with_traceparent_continues_that_trace(
    traced: TracedWorker, receiver: OtlpReceiver
) -> None:
    broker = traced.broker
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    task_id = str(uuid.uuid4())
    # A non-Python upstream: the documented protocol fields plus a W3C traceparent header.
    headers = {
        "lang": "py",
        "task": SEND_EMAIL.name,
        "id": task_id,
        "root_id": task_id,
        "traceparent": f"00-{trace_id}-{parent_id}-01",
    }
    body = json.dumps([[], {"to": ["ada@example.com"], "subject": "Raw", "text": "."}, {}])
    with Connection(broker.broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange="",
            routing_key=f"{broker.namespace}{SEND_EMAIL.queue}",
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
            delivery_mode=2,
        )

    spans = _wait_trace(receiver, trace_id, ("CONSUMER", RUN_EMAIL, 1), ("CLIENT", "smtp send", 1))
    run = _one(spans, "CONSUMER", RUN_EMAIL)
    assert run.parent_span_id == parent_id
    assert run.attributes["messaging.message.id"] == task_id
    assert _one(spans, "CLIENT", "smtp send").parent_span_id == run.span_id


def test_retried_attempt_stays_in_the_trace_of_the_failed_one(
    traced: TracedWorker,
    receiver: OtlpReceiver,
    upstream: TracerProvider,
    webhook_sink: WebhookSink,
) -> None:
    webhook_sink.script(Reply(status=500), Reply())
    (handle,), (result,), trace_id = _from_upstream(
        traced, upstream, lambda p: p.publish(SEND_IM, _im(webhook_sink)), timeout=30
    )
    assert result.status_code == 200  # first retry waits 1-2 s

    spans = _wait_trace(receiver, trace_id, ("CONSUMER", RUN_IM, 2), ("CLIENT", "POST", 2),
                        ("PRODUCER", f"{SEND_IM.name} publish", 1))  # fmt: skip
    # Every span of this task, whatever its trace: both attempts, and nowhere else.
    attempts = [
        s
        for s in receiver.spans
        if s.kind == "CONSUMER" and s.attributes.get("messaging.message.id") == handle.id
    ]
    assert [a.trace_id for a in attempts] == [trace_id, trace_id]
    publish = _one(spans, "PRODUCER", f"{SEND_IM.name} publish")
    (first,) = [a for a in attempts if a.parent_span_id == publish.span_id]
    (second,) = [a for a in attempts if a is not first]
    # The retry is published from inside the failed attempt, and the next attempt is its child.
    (retry,) = [s for s in spans if s.span_id == second.parent_span_id]
    assert (retry.kind, retry.parent_span_id) == ("PRODUCER", first.span_id)
    assert "celery.retry.reason" in first.attributes
    statuses = {
        s.parent_span_id: s.attributes.get(
            "http.status_code", s.attributes.get("http.response.status_code")
        )
        for s in _all(spans, "CLIENT", "POST")
    }
    assert statuses == {first.span_id: 500, second.span_id: 200}


def test_publish_many_is_one_producer_span_over_every_task(
    traced: TracedWorker,
    receiver: OtlpReceiver,
    upstream: TracerProvider,
    webhook_sink: WebhookSink,
) -> None:
    handles, results, trace_id = _from_upstream(
        traced,
        upstream,
        lambda p: p.publish_many(SEND_IM, [_im(webhook_sink, f"n{i}") for i in range(3)]),
    )
    assert [result.status_code for result in results] == [200, 200, 200]

    spans = _wait_trace(receiver, trace_id, ("CONSUMER", RUN_IM, 3),
                        ("PRODUCER", f"{SEND_IM.name} publish", 1))  # fmt: skip
    publish = _one(spans, "PRODUCER", f"{SEND_IM.name} publish")
    assert publish.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in publish.attributes
    runs = _all(spans, "CONSUMER", RUN_IM)
    assert {r.parent_span_id for r in runs} == {publish.span_id}
    assert {r.attributes["messaging.message.id"] for r in runs} == {h.id for h in handles}


def test_a_beat_firing_is_the_producer_span_the_worker_run_continues(
    traced: TracedWorker, receiver: OtlpReceiver, webhook_sink: WebhookSink, tmp_path: Path
) -> None:
    broker, name = traced.broker, f"traced-{uuid.uuid4().hex[:6]}"
    entry = ScheduleEntry(
        name=name, task=SEND_IM.name, payload=_im(webhook_sink, "from beat"),
        schedule=IntervalSchedule(every=1),
    )  # fmt: skip
    env = {**broker.env(), **_traced_env(receiver), "TASKLANE_BEAT_LOCK_TTL": "2"}
    command = [str(Path(sys.executable).with_name("tasklane")), "beat"]
    with Schedules(broker.settings) as schedules:
        schedules.add(entry)
        beat = WorkerProcess.from_command(command, env, tmp_path / "beat.log")
        try:

            def fired(spans: list[ReceivedSpan]) -> bool:
                return any(s.service == "tasklane-beat" and s.kind == "PRODUCER" for s in spans)

            producer = next(
                s
                for s in receiver.wait_for(fired, timeout=60)  # Beat starts first: seconds
                if s.service == "tasklane-beat" and s.kind == "PRODUCER"
            )
            spans = _wait_trace(receiver, producer.trace_id, ("CONSUMER", RUN_IM, 1))
        finally:
            schedules.remove(name)
            beat.stop()
    assert producer.name == f"{SEND_IM.name} publish"
    assert producer.parent_span_id is None  # a firing starts its trace
    run = _all(spans, "CONSUMER", RUN_IM)[0]
    assert (run.parent_span_id, run.service) == (producer.span_id, "tasklane-notifier")
    assert _one(spans, "CLIENT", "POST").parent_span_id == run.span_id


# Flushing and switching tracing off do not depend on the broker: Redis alone keeps the module fast.
@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_pool_processes_flush_their_spans_when_the_worker_stops(
    broker: BrokerEnv, start_worker: StartWorker, webhook_sink: WebhookSink
) -> None:
    with OtlpReceiver() as receiver:
        # A minute between exports: the spans can only arrive through the flush at exit.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "60000"}
        worker = start_worker(concurrency=1, **env)
        with Publisher(broker.settings) as publisher:
            first = publisher.publish(SEND_IM, _im(webhook_sink, "first"))
            assert first.get(timeout=20).status_code == 200
            # Celery stores a result before its tracer returns, where the run's span ends. The
            # one pool process starts the second run only after that: once the second result is
            # in, the first span has ended and waits in the export queue.
            assert publisher.publish(SEND_IM, _im(webhook_sink)).get(timeout=20).status_code == 200
        assert receiver.spans == []
        worker.stop()
        spans = receiver.wait_for(
            lambda got: sorted(s.name for s in got) == ["POST", "POST", RUN_IM, RUN_IM], 5.0
        )
    # Each run's HTTP call is its child, the first run's among them.
    runs = {s.span_id: s for s in _all(spans, "CONSUMER", RUN_IM)}
    calls = _all(spans, "CLIENT", "POST")
    assert {(c.trace_id, c.parent_span_id) for c in calls} == {
        (r.trace_id, r.span_id) for r in runs.values()
    }
    assert first.id in {r.attributes["messaging.message.id"] for r in runs.values()}


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_worker_sampling_at_ratio_0_records_only_the_runs_its_upstream_sampled(
    broker: BrokerEnv, start_worker: StartWorker, webhook_sink: WebhookSink
) -> None:
    """Root runs and runs of unsampled traces record nothing, yet run in a trace they pass on.

    The test process is not traced itself (no provider): the trace contexts it publishes in
    are set by hand, as an upstream's sampler would have decided them.
    """
    with OtlpReceiver() as receiver:
        env = {**_traced_env(receiver), "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
               "OTEL_TRACES_SAMPLER_ARG": "0"}  # fmt: skip
        # One pool process: its spans are exported in the order the runs ended.
        worker = start_worker(concurrency=1, **env)
        sampled, unsampled = (secrets.randbits(128) for _ in range(2))
        with Publisher(broker.settings) as publisher:
            handles = []
            for trace_id in (None, unsampled, sampled):
                text = f"in trace {trace_id}"
                if trace_id is None:
                    handles.append(publisher.publish(SEND_IM, _im(webhook_sink, text)))
                else:
                    flags = trace.TraceFlags(1 if trace_id == sampled else 0)
                    parent = trace.SpanContext(trace_id, 0x00F067AA0BA902B7, False, flags)
                    with trace.use_span(trace.NonRecordingSpan(parent)):
                        handles.append(publisher.publish(SEND_IM, _im(webhook_sink, text)))
                assert handles[-1].get(timeout=20).status_code == 200
        root, in_unsampled, in_sampled = handles
        kept = _wait_trace(receiver, format_trace_id(sampled), ("CONSUMER", RUN_IM, 1))
        assert _one(kept, "CONSUMER", RUN_IM).attributes["messaging.message.id"] == in_sampled.id
        # The other two ran first, so their spans would have been exported by now.
        assert [s.trace_id for s in receiver.spans if s.kind == "CONSUMER"] == [
            format_trace_id(sampled)
        ]
    # Not recorded, yet each ran in a trace its HTTP call carried on, unsampled.
    calls = [r.headers["traceparent"].split("-") for r in webhook_sink.requests]
    (_, root_trace, _, root_flags), (_, unsampled_trace, _, unsampled_flags), _ = calls
    assert int(root_trace, 16) != 0 and unsampled_trace == format_trace_id(unsampled)
    assert (int(root_flags, 16) & 1, int(unsampled_flags, 16) & 1) == (0, 0)
    assert calls[2][1] == format_trace_id(sampled) and int(calls[2][3], 16) & 1
    lines = [json.loads(line) for line in worker.output().splitlines() if line[:1] == "{"]
    assert {line["trace_id"] for line in lines if line.get("task_id") == root.id} == {root_trace}


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.parametrize("switch", ["no endpoint", "sdk disabled"])
def test_tracing_off_installs_nothing_and_exports_nothing(
    broker: BrokerEnv, start_worker: StartWorker, webhook_sink: WebhookSink, switch: str
) -> None:
    with OtlpReceiver() as receiver:  # its own: late spans of the traced tests go to theirs
        env = {**_traced_env(receiver), "OTEL_SDK_DISABLED": "true"}
        if switch == "no endpoint":
            env = {"OTEL_BSP_SCHEDULE_DELAY": "200"}
        assert not tracing_enabled(env)
        worker = start_worker(**env)
        with Publisher(broker.settings) as publisher:
            handle = publisher.publish(SEND_IM, _im(webhook_sink))
            assert handle.get(timeout=20).status_code == 200
        # No httpx instrumentation in the worker: no context went out with the webhook.
        (request,) = webhook_sink.requests
        assert "traceparent" not in request.headers
        # A traced worker exports what it holds as it stops (the test above): once this one
        # has stopped, any span it had made would have reached the receiver.
        worker.stop()
        assert (receiver.spans, receiver.refused) == ([], [])
    assert "tracing on" not in worker.output()
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
