"""The backlog KEDA would read from a real broker, through the rendered ScaledObject.

A pool's queues are filled with a known backlog (several priority sub-lists, some messages held
unacknowledged by a consumer), then each trigger of the rendered ScaledObject is read the way
KEDA's scaler reads it and the scalingModifiers formula is evaluated: the replica count must be
the one docs/deploy.md promises, ceil(backlog / target) within min and max.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis  # type: ignore[import-untyped,unused-ignore]

from tasklane.broker import connect
from tasklane.contracts import SEND_EMAIL, SEND_IM, TaskContract
from tasklane.exporter import read_queues
from tasklane.publish import Publisher
from tasklane.routing import work_queue
from tasklane.settings import Settings
from tests.deploy.conftest import NAMESPACE, RELEASE

pytestmark = pytest.mark.integration

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
MANAGEMENT = "http://127.0.0.1:15672"
TARGET = 10
EMAIL = {"to": ["ada@example.com"], "subject": "Hi", "text": "Hello"}
IM = {"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}


def scaled_object(chart: Any, kind: str, namespace: str, **scaling: Any) -> dict[str, Any]:
    """The notifier pool's rendered ScaledObject for a broker kind and queue namespace."""
    import yaml

    values = {
        "tasklane": {"namespace": namespace},
        "broker": {"kind": kind},
        "autoscaling": {"keda": {"redis": {"databaseIndex": 9}}},
        "workers": {
            "pools": {
                "notifier": {
                    "service": "notifier",
                    "autoscaling": {
                        "targetBacklogPerReplica": TARGET,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        **scaling,
                    },
                }
            }
        },
    }
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    text = rendered["tasklane/templates/workers/worker-scaledobject.yaml"]
    found: dict[str, Any]
    (found,) = [
        doc
        for doc in yaml.safe_load_all(text)
        if doc and doc["metadata"]["name"] == f"{RELEASE}-notifier"
    ]
    return found


def evaluate(formula: str, metrics: dict[str, float]) -> float:
    """The scalingModifiers formula over the trigger metrics: only sums of names are allowed."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.Name):
            return metrics[node.id]
        raise AssertionError(f"unexpected formula element {ast.dump(node)}")

    return walk(ast.parse(formula, mode="eval"))


def desired_replicas(spec: dict[str, Any], value: float) -> int:
    """What KEDA and the HPA make of the formula's value (AverageValue target, activation)."""
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers["metricType"] == "AverageValue"
    if spec["minReplicaCount"] == 0 and value <= float(modifiers["activationTarget"]):
        return 0
    wanted = math.ceil(value / float(modifiers["target"]))
    return max(max(int(spec["minReplicaCount"]), 1), min(int(spec["maxReplicaCount"]), wanted))


def publish_backlog(settings: Settings, per_priority: dict[int, int]) -> int:
    """Publish emails and IMs at several priorities; the number published."""
    total = 0
    with Publisher(settings) as publisher:
        for priority, count in per_priority.items():
            for index in range(count):
                contract: TaskContract[Any, Any] = SEND_EMAIL if index % 2 else SEND_IM
                publisher.publish(contract, EMAIL if index % 2 else IM, priority=priority)
                total += 1
    return total


@contextmanager
def held_unacked(settings: Settings, count: int) -> Iterator[None]:
    """Take ``count`` messages from notifier.email without acknowledging them, while inside."""
    with connect(settings) as connection:
        channel = connection.channel()
        queue = work_queue(SEND_EMAIL, settings.namespace)(channel)
        taken = [queue.get(no_ack=False) for _ in range(count)]
        assert all(message is not None for message in taken)
        try:
            yield
        finally:
            for message in taken:
                message.requeue()
            channel.close()


@pytest.fixture
def chart() -> Any:
    import helm_python

    from tests.deploy.conftest import CHART

    return helm_python.Chart.load(CHART)


# ----------------------------------------------------------------------------- Redis


def test_redis_backlog_is_the_sum_of_every_priority_sub_list(chart: Any, redis_url: str) -> None:
    namespace = f"k{uuid.uuid4().hex[:10]}."
    settings = Settings(broker_url=redis_url, namespace=namespace)
    spec = scaled_object(chart, "redis", namespace)["spec"]
    client = redis.Redis.from_url(redis_url)
    lists = [t["metadata"]["listName"] for t in spec["triggers"]]
    try:
        published = publish_backlog(settings, {0: 9, 5: 14, 9: 12})
        with held_unacked(settings, 3):
            metrics = {}
            for trigger in spec["triggers"]:
                meta = trigger["metadata"]
                assert meta["databaseIndex"] == "9"
                # KEDA's redis scaler: LLEN of listName in databaseIndex.
                metrics[trigger["name"]] = float(client.llen(meta["listName"]))
            value = evaluate(spec["advanced"]["scalingModifiers"]["formula"], metrics)
            # Three priorities land in three different sub-lists per queue: one trigger alone
            # (what the HPA's max over triggers would see) is well below the backlog.
            assert sum(1 for v in metrics.values() if v) >= 4
            assert max(metrics.values()) < value
            # Waiting messages only: on Redis a reserved message sits in Kombu's unacked hash,
            # which no list length shows (docs/deploy.md: the grace period covers in-flight work).
            assert value == published - 3 == 32
            assert desired_replicas(spec, value) == math.ceil(32 / TARGET) == 4
            # tasklane exporter reads the same broker: its waiting messages of the pool's queues
            # are KEDA's backlog, and it also shows the 3 in flight that KEDA cannot see.
            pool = {f"{namespace}{SEND_EMAIL.queue}", f"{namespace}{SEND_IM.queue}"}
            stats = [q for q in read_queues(settings) if q.name in pool]
            assert {q.kind for q in stats} == {"work"} and len(stats) == 2
            assert sum(q.messages for q in stats) == value
            assert sum(q.unacked or 0 for q in stats) == 3
        assert evaluate(
            spec["advanced"]["scalingModifiers"]["formula"],
            {t["name"]: float(client.llen(t["metadata"]["listName"])) for t in spec["triggers"]},
        ) == float(published)
    finally:
        client.delete(*lists, *client.keys(f"*{namespace}*"))


def test_redis_replicas_are_bounded_and_scale_to_zero_activates(chart: Any, redis_url: str) -> None:
    namespace = f"k{uuid.uuid4().hex[:10]}."
    settings = Settings(broker_url=redis_url, namespace=namespace)
    spec = scaled_object(chart, "redis", namespace, scaleToZero=True, activationBacklog=2)["spec"]
    client = redis.Redis.from_url(redis_url)

    def replicas() -> int:
        metrics = {
            t["name"]: float(client.llen(t["metadata"]["listName"])) for t in spec["triggers"]
        }
        return desired_replicas(
            spec, evaluate(spec["advanced"]["scalingModifiers"]["formula"], metrics)
        )

    try:
        assert spec["minReplicaCount"] == 0
        assert replicas() == 0
        publish_backlog(settings, {3: 2})
        assert replicas() == 0  # at the activation threshold, not above it
        publish_backlog(settings, {7: 1})
        assert replicas() == 1
        publish_backlog(settings, {0: 60})
        assert replicas() == 4  # ceil(63 / 10) = 7, capped by maxReplicas
    finally:
        client.delete(*client.keys(f"*{namespace}*"))


# ----------------------------------------------------------------------------- RabbitMQ


def _management_messages(queue: str) -> int | None:
    """The management API's `messages` (ready + unacknowledged), or None when it is off."""
    request = urllib.request.Request(f"{MANAGEMENT}/api/queues/%2F/{queue}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:
            return int(json.load(answer)["messages"])
    except (urllib.error.URLError, ConnectionError):
        return None


def _queue_stat(queue: str) -> int:
    """KEDA's http QueueLength reads the queue's `messages` (ready + unacknowledged) from the
    management API; without the plugin the same broker statistic comes from rabbitmqctl."""
    over_http = _management_messages(queue)
    if over_http is not None:
        return over_http
    rabbitmqctl = shutil.which("rabbitmqctl")
    assert rabbitmqctl, "neither the management API nor rabbitmqctl is available"
    listing = subprocess.run(
        [rabbitmqctl, "list_queues", "--quiet", "--no-table-headers", "name", "messages"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    counts = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    return int(counts[queue])


def test_rabbitmq_backlog_counts_unacknowledged_messages(chart: Any) -> None:
    from tests.integration.harness import rabbitmq_reachable

    assert rabbitmq_reachable(), "RabbitMQ must answer at 127.0.0.1:5672"
    namespace = f"k{uuid.uuid4().hex[:10]}."
    settings = Settings(broker_url=AMQP_URL, result_backend=None, namespace=namespace)
    spec = scaled_object(chart, "rabbitmq", namespace)["spec"]
    queues = [t["metadata"]["queueName"] for t in spec["triggers"]]
    assert queues == [f"{namespace}notifier.email", f"{namespace}notifier.im"]
    try:
        published = publish_backlog(settings, {0: 8, 9: 9})
        with held_unacked(settings, 3), connect(settings) as connection:
            metrics = {
                t["name"]: float(_queue_stat(t["metadata"]["queueName"])) for t in spec["triggers"]
            }
            value = evaluate(spec["advanced"]["scalingModifiers"]["formula"], metrics)
            # The chart's http protocol: in-flight messages keep their replicas.
            assert value == published == 17
            assert desired_replicas(spec, value) == 2
            # What protocol amqp would have read: a passive declare counts ready messages only.
            channel = connection.channel()
            ready = sum(channel.queue_declare(q, passive=True).message_count for q in queues)
            assert ready == published - 3
            # tasklane exporter reads ready messages and consumers (AMQP has no unacked count).
            stats = [q for q in read_queues(settings) if q.name in queues]
            assert len(stats) == 2 and sum(q.messages for q in stats) == ready
    finally:
        with connect(settings) as connection:
            channel = connection.channel()
            for queue in queues:
                channel.queue_delete(queue)
                channel.queue_delete(f"{queue}.dlq")
                channel.exchange_delete(queue)
            channel.exchange_delete(f"{namespace}tasklane.dlx")
