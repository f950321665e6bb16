"""Worker metrics under the prefork pool: exact counts across recycled children, bounded labels."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tasklane.publish import Publisher
from tasklane.wire.protocol import TaskMessage, task_message
from tasklane_dev.sinks import Reply, WebhookSink, free_port
from tests.support import eventually
from tests.support.harness import (
    BrokerEnv,
    WorkerProcess,
    publish_through_kombu,
    wait_for_dead_letters,
)

TASK = "notifier.im.send"
#: Every label a notifier worker's series may carry; each has a fixed, small set of values.
ALLOWED_LABELS = {"task", "queue", "reason", "service", "le", "channel", "outcome"}


@pytest.fixture
def metered(
    broker: BrokerEnv, webhook_sink: WebhookSink, tmp_path: Path
) -> Iterator[tuple[WorkerProcess, int, Path]]:
    port = free_port()
    files = tmp_path / "metrics"
    env = {
        **broker.env(),
        "TASKLANE_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(files),
        "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
    }
    worker = WorkerProcess.recycling(
        "notifier", env, tmp_path / "worker.log", max_tasks_per_child=4
    )
    worker.wait_ready()
    yield worker, port, files
    worker.stop()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def send_as_sent(broker: BrokerEnv, queue: str, messages: list[TaskMessage]) -> None:
    """Send encoded messages to a contract queue as they are, past the publisher's checks."""
    with Connection(broker.broker_url) as conn:
        for message in messages:
            publish_through_kombu(conn, message, f"{broker.namespace}{queue}")


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


def test_counts_are_exact_across_recycled_pool_children_and_labels_stay_bounded(
    broker: BrokerEnv, metered: tuple[WorkerProcess, int, Path], webhook_sink: WebhookSink
) -> None:
    worker, port, files = metered
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "count me"}
    with Publisher(broker.settings) as publisher:
        queue = publisher.contract(TASK).queue
        published = {"task": TASK, "queue": f"{broker.namespace}{queue}"}
        before = REGISTRY.get_sample_value("tasklane_tasks_published_total", published) or 0
        handles = [publisher.publish(TASK, payload) for _ in range(30)]
        after = REGISTRY.get_sample_value("tasklane_tasks_published_total", published)
        assert after == before + 30  # the publishing process counts what it sent
        # Three messages whose payload breaks the contract, as a non-Python upstream might send.
        send_as_sent(
            broker,
            queue,
            [
                task_message(TASK, str(uuid.uuid4()), {"channel": "fax", "text": "x"})
                for _ in range(3)
            ],
        )
        for handle in handles:
            handle.get(timeout=60)
    wait_for_dead_letters(broker, queue, 3)
    labels = {"task": TASK, "queue": f"{broker.namespace}{queue}"}
    # A run's runtime is recorded last, as its tracer returns: then every count is final.
    eventually(
        lambda: total(scrape(port), "tasklane_task_runtime_seconds_count", **labels) >= 33,
        timeout=10,
        interval=0.2,
        message="the runtimes of all 33 tasks",
    )
    samples = scrape(port)
    assert total(samples, "tasklane_tasks_received_total", **labels) == 33
    assert total(samples, "tasklane_tasks_started_total", **labels) == 33
    assert total(samples, "tasklane_tasks_succeeded_total", **labels) == 30
    assert total(samples, "tasklane_tasks_failed_total", **labels) == 3
    assert total(samples, "tasklane_tasks_rejected_total", **labels) == 3
    assert total(samples, "tasklane_tasks_dead_lettered_total", reason="invalid-payload") == 3
    assert total(samples, "tasklane_task_runtime_seconds_count", **labels) == 33
    assert total(samples, "tasklane_task_queue_wait_seconds_count", **labels) == 33
    # Read from the main process's worker state, which learns that a task ended once the pool
    # child's result reaches it.
    wait_for_total(port, "tasklane_tasks_in_flight", 0, **labels)
    # The notifier's own metric: the 30 valid deliveries; the 3 refused never reached a channel.
    deliveries = "tasklane_notifier_deliveries_total"
    assert total(samples, deliveries, channel="webhook", outcome="delivered") == 30
    assert total(samples, deliveries) == 30
    assert total(samples, "tasklane_worker_up", service="notifier") == 1
    # 33 tasks on two children that each stop after 4: many children came and went.
    pids = {re.sub(r"\D", "", path.stem.split("_")[-1]) for path in files.glob("counter_*.db")}
    assert len(pids) >= 6, pids
    for (_, sample_labels), _ in samples.items():
        names = {name for name, _ in sample_labels}
        assert names <= ALLOWED_LABELS, names
        for _, value in sample_labels:
            assert "://" not in value and not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", value)


def wait_for_total(
    port: int, name: str, expected: float, timeout: float = 30, **labels: str
) -> None:
    eventually(
        lambda: total(scrape(port), name, **labels) == expected,
        timeout=timeout,
        interval=0.2,
        message=f"{name}{labels} to reach {expected}",
    )


def test_a_pool_child_killed_mid_task_leaves_no_task_in_flight(
    broker: BrokerEnv, metered: tuple[WorkerProcess, int, Path], webhook_sink: WebhookSink
) -> None:
    worker, port, _ = metered
    webhook_sink.script(Reply(delay=20))  # holds the first delivery while its child is killed
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "in flight"}
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(TASK, payload)
        webhook_sink.wait_for(1)
        wait_for_total(port, "tasklane_tasks_in_flight", 1, task=TASK)
        # As the kernel's OOM killer would: no exit handler runs in the child.
        for pid in worker.children():
            os.kill(pid, signal.SIGKILL)
        handle.get(timeout=60)  # redelivered (acks_late, reject on worker lost) and delivered
    wait_for_total(port, "tasklane_tasks_succeeded_total", 1, task=TASK)
    wait_for_total(port, "tasklane_tasks_in_flight", 0)
    samples = scrape(port)
    # The killed child's counters are kept: both attempts started.
    assert total(samples, "tasklane_tasks_started_total", task=TASK) == 2
    assert worker.process.poll() is None


def test_a_retry_is_counted_once_and_the_task_once_as_succeeded(
    broker: BrokerEnv, metered: tuple[WorkerProcess, int, Path], webhook_sink: WebhookSink
) -> None:
    _, port, _ = metered
    webhook_sink.script(Reply(status=503))
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "once more"}
    with Publisher(broker.settings) as publisher:
        publisher.publish(TASK, payload).get(timeout=60)
    wait_for_total(port, "tasklane_tasks_succeeded_total", 1, task=TASK)
    samples = scrape(port)
    assert total(samples, "tasklane_tasks_retried_total", task=TASK) == 1
    assert total(samples, "tasklane_tasks_failed_total", task=TASK) == 0
    assert total(samples, "tasklane_tasks_started_total", task=TASK) == 2
    assert total(samples, "tasklane_notifier_deliveries_total", outcome="delivered") == 1
    wait_for_total(port, "tasklane_tasks_in_flight", 0)


def test_a_task_that_expires_before_it_runs_is_counted_as_revoked(
    broker: BrokerEnv, metered: tuple[WorkerProcess, int, Path], webhook_sink: WebhookSink
) -> None:
    _, port, _ = metered
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "too late"}
    with Publisher(broker.settings) as publisher:
        # The worker holds it until its countdown, when it has expired: dropped, never run.
        publisher.publish(TASK, payload, countdown=2, expires=0.5)
        wait_for_total(port, "tasklane_tasks_revoked_total", 1, task=TASK)
        publisher.publish(TASK, payload).get(timeout=30)  # a later task runs as usual
    samples = scrape(port)
    # Received as taken from the queue, the expired one too: on classic queues the worker held
    # it until its countdown; quorum queues hold a countdown in the broker, and the worker drops
    # the message on arrival.
    assert total(samples, "tasklane_tasks_received_total", task=TASK) == 2
    assert total(samples, "tasklane_tasks_started_total", task=TASK) == 1
    assert total(samples, "tasklane_tasks_revoked_total", task=TASK) == 1
    assert webhook_sink.wait_for(1)[0].body  # only the later task was delivered


def test_messages_for_no_task_the_worker_knows_or_with_a_broken_body_are_not_received(
    broker: BrokerEnv, metered: tuple[WorkerProcess, int, Path], webhook_sink: WebhookSink
) -> None:
    _, port, _ = metered
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "counted"}
    with Publisher(broker.settings) as publisher:
        queue = publisher.contract(TASK).queue
        send_as_sent(
            broker,
            queue,
            [
                task_message("notifier.im.unheard_of", str(uuid.uuid4()), {"text": "x"}),
                task_message(TASK, str(uuid.uuid4()), b'{"not": "a list"}'),
            ],
        )
        wait_for_dead_letters(broker, queue, 2)
        publisher.publish(TASK, payload).get(timeout=30)
    samples = scrape(port)
    assert total(samples, "tasklane_tasks_received_total") == 1  # the one task it ran
    assert total(samples, "tasklane_tasks_received_total", task=TASK) == 1
    assert total(samples, "tasklane_tasks_dead_lettered_total", reason="unknown-task") == 1


def test_a_protocol_1_message_is_received_under_the_task_its_body_names(
    broker: BrokerEnv, metered: tuple[WorkerProcess, int, Path], webhook_sink: WebhookSink
) -> None:
    """Celery 3-style publishers put the task's name in the body, not in a header."""
    _, port, _ = metered
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "protocol 1"}
    task_id = str(uuid.uuid4())
    # Celery's own protocol 1 encoder: headers empty, the task's name in the body.
    v1 = Celery(set_as_current=False).amqp.as_task_v1(task_id, TASK, kwargs=payload)
    with Publisher(broker.settings) as publisher:
        queue = publisher.contract(TASK).queue
        message = TaskMessage(task_id, json.dumps(v1.body).encode(), v1.headers, v1.properties)
        send_as_sent(broker, queue, [message])
        assert publisher.handle(TASK, task_id).get(timeout=30) is not None
    assert webhook_sink.wait_for(1)[0].body
    samples = scrape(port)
    assert total(samples, "tasklane_tasks_received_total", task=TASK) == 1
