"""``tasklane exporter`` against real brokers: what it reports is what the broker holds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.message import Message
from kombu.messaging import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from tasklane.contracts import REGISTRY, SEND_EMAIL, SEND_IM
from tasklane.errors import SettingsError
from tasklane.observability.exporter import QueueCollector, collect_once, start
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane.wire.broker import connect, redis_queue_keys
from tasklane.wire.deadletter import send_to_dlq
from tasklane.wire.queues import queue_names
from tasklane.wire.routing import QueueOptions, queue_name, work_queue
from tests.support import eventually
from tests.support.harness import BrokerEnv, RedisServer

EMAIL = {"to": ["ada@example.com"], "subject": "hi", "text": "hello"}
TASKLANE = str(Path(sys.executable).with_name("tasklane"))

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def values(samples: Any) -> Values:
    """Samples keyed by name and sorted labels, for exact lookups."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def queue_value(found: Values, metric: str, queue: str, kind: str | None = None) -> float | None:
    labels = {"queue": queue} if kind is None else {"queue": queue, "kind": kind}
    return found.get((metric, tuple(sorted(labels.items()))))


def per_queue(found: Values, metric: str) -> dict[str, float]:
    return {
        dict(labels)["queue"]: value for (name, labels), value in found.items() if name == metric
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def parsed(text: str) -> Values:
    return values(s for family in text_string_to_metric_families(text) for s in family.samples)


@pytest.fixture
def email_queue(broker: BrokerEnv) -> str:
    return queue_name(SEND_EMAIL, broker.namespace)


def test_depths_per_queue_and_kind(broker: BrokerEnv, email_queue: str) -> None:
    with Publisher(broker.settings) as publisher:
        for priority in (0, 5, 9):
            publisher.publish(SEND_EMAIL, EMAIL, priority=priority)
    with connect(broker.settings) as conn:  # Tasklane's Redis binding separator, not Kombu's
        send_to_dlq(
            Producer(conn.default_channel),
            queue=email_queue,
            namespace=broker.namespace,
            options=QueueOptions.of(broker.settings),
            body=b"[[], {}, {}]",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": SEND_EMAIL.name},
        )
    if broker.kind == "redis":  # the three messages really sit in three priority sub-lists
        client = redis.Redis.from_url(broker.broker_url)
        assert sum(1 for key in redis_queue_keys(email_queue) if client.llen(key)) == 3

    found = values(collect_once(broker.settings))

    depths = per_queue(found, "tasklane_queue_messages")
    expected = {name: 0.0 for name, _ in queue_names(REGISTRY, broker.namespace)}
    expected |= {email_queue: 3.0, f"{email_queue}.dlq": 1.0}
    assert depths == expected
    assert queue_value(found, "tasklane_queue_messages", email_queue, "work") == 3
    assert queue_value(found, "tasklane_queue_messages", f"{email_queue}.dlq", "dead-letter") == 1
    assert found[("tasklane_exporter_up", ())] == 1
    assert found[("tasklane_exporter_scrape_duration_seconds", ())] > 0


def test_reserved_message_counts_as_unacked_on_redis_and_consumer_on_rabbitmq(
    broker: BrokerEnv, email_queue: str
) -> None:
    with Publisher(broker.settings) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL)
        publisher.publish(SEND_EMAIL, EMAIL)
    received: list[Message] = []
    with connect(broker.settings) as conn:
        consumer = Consumer(
            conn,
            queues=[work_queue(SEND_EMAIL, broker.namespace, QueueOptions.of(broker.settings))],
            callbacks=[lambda _body, message: received.append(message)],  # never acked
            accept=["json"],
            no_ack=False,
            prefetch_count=1,
        )
        with consumer:
            conn.drain_events(timeout=5)
            assert len(received) == 1

            found = values(collect_once(broker.settings))

    assert queue_value(found, "tasklane_queue_messages", email_queue, "work") == 1
    unacked = per_queue(found, "tasklane_queue_unacked_messages")
    consumers = per_queue(found, "tasklane_queue_consumers")
    if broker.kind == "redis":
        assert unacked[email_queue] == 1
        assert sum(unacked.values()) == 1
        assert consumers == {}  # BRPOP leaves no trace: not reported rather than a false 0
    else:
        assert consumers[email_queue] == 1
        assert sum(consumers.values()) == 1
        assert unacked == {}


def test_oldest_message_age(broker: BrokerEnv, email_queue: str) -> None:
    with Publisher(broker.settings) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL, priority=0)
        time.sleep(1.5)
        # The same sub-list (the older message goes next) and one served before it: the age is
        # still the oldest message's.
        publisher.publish(SEND_EMAIL, EMAIL, priority=0)
        publisher.publish(SEND_EMAIL, EMAIL, priority=9)
    im_queue = queue_name(SEND_IM, broker.namespace)
    with connect(broker.settings) as conn:  # as plain Celery publishes: no publish-time header
        Producer(conn.default_channel).publish(
            {"hello": "world"},
            exchange="",
            routing_key=im_queue,
            declare=[work_queue(SEND_IM, broker.namespace, QueueOptions.of(broker.settings))],
        )

    found = values(collect_once(broker.settings))

    ages = per_queue(found, "tasklane_queue_oldest_message_age_seconds")
    if broker.kind == "rabbitmq":
        assert ages == {}  # a message cannot be peeked without taking it
        return
    assert 1.5 <= ages.pop(email_queue) < 10
    assert im_queue not in ages  # unknown, not 0: the only message has no header
    work = {name for name, kind in queue_names(REGISTRY, broker.namespace) if kind == "work"}
    assert ages == dict.fromkeys(work - {email_queue, im_queue}, 0.0)  # empty; no DLQ ages


def test_scrapes_within_the_interval_come_from_the_cache(broker: BrokerEnv) -> None:
    collector = QueueCollector(broker.settings, interval=60.0)
    before = values(s for family in collector.collect() for s in family.samples)
    with Publisher(broker.settings) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL)

    after = values(s for family in collector.collect() for s in family.samples)

    assert after == before
    fresh = values(collect_once(broker.settings))
    email = queue_name(SEND_EMAIL, broker.namespace)
    assert queue_value(fresh, "tasklane_queue_messages", email, "work") == 1


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server this test may kill; the shared one is never touched."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def test_broker_down_reports_up_zero_and_keeps_serving(own_redis: RedisServer) -> None:
    url = own_redis.url
    server, thread = start(Settings(broker_url=url, namespace="down."), port=0, interval=0.0)
    try:
        port = server.server_port
        assert parsed(scrape(port))[("tasklane_exporter_up", ())] == 1

        own_redis.kill()
        down = parsed(scrape(port))
        again = parsed(scrape(port))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    for found in (down, again):
        assert found[("tasklane_exporter_up", ())] == 0
        assert not any(name.startswith("tasklane_queue_") for name, _ in found)


def test_exporter_command_serves_metrics_until_sigterm(broker: BrokerEnv) -> None:
    port = free_port()
    process = subprocess.Popen(
        [TASKLANE, "exporter", "--port", str(port), "--interval", "1"],
        env={**os.environ, **broker.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> str:
            assert process.poll() is None, process.communicate()[0].decode()
            return scrape(port)

        text = eventually(
            answers, timeout=20, interval=0.1, message="the exporter", ignoring=(OSError,)
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, process.communicate()[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        assert process.stdout is not None
        process.stdout.close()

    families = list(text_string_to_metric_families(text))
    names = {family.name for family in families}
    assert {"tasklane_queue_messages", "tasklane_exporter_up"} <= names
    labels = {label for family in families for s in family.samples for label in s.labels}
    assert labels <= {"queue", "kind"}  # bounded: queue names only, no per-message labels
    found = parsed(text)
    assert found[("tasklane_exporter_up", ())] == 1
    assert set(per_queue(found, "tasklane_queue_messages")) == {
        name for name, _ in queue_names(REGISTRY, broker.namespace)
    }


def test_no_broker_configured_is_an_error_not_a_silent_up_zero() -> None:
    with pytest.raises(SettingsError):
        start(Settings(), port=0)
