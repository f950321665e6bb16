"""Quorum queues on RabbitMQ (``TASKLANE_RABBITMQ_QUEUE_TYPE=quorum``): how the publisher and the
worker declare them, and that a message handed out too often is dead-lettered, not dropped.

These run on the shared single-node broker (a quorum queue needs no cluster to be declared);
node loss is tested on a cluster of three started by its own test.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from kombu import Connection

from tasklane.contracts import SEND_EMAIL
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane.wire.deadletter import DeadLetterQueue
from tasklane.wire.protocol import encode_body
from tasklane.wire.routing import QueueOptions, dlq_name, queue_name
from tasklane_dev.sinks import SmtpSink
from tests.integration.wire.test_dead_letters import EMAIL, send_raw
from tests.support import eventually
from tests.support.harness import BrokerEnv

pytestmark = pytest.mark.integration

RABBITMQ_ONLY = pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
MANAGEMENT = "http://127.0.0.1:15672/api"


def quorum_settings(broker: BrokerEnv, **overrides: Any) -> Settings:
    return Settings(
        broker_url=broker.broker_url,
        result_backend=broker.result_backend,
        namespace=broker.namespace,
        rabbitmq_queue_type="quorum",
        **overrides,
    )


def queue_info(name: str) -> dict[str, Any]:
    answer = httpx.get(f"{MANAGEMENT}/queues/%2F/{quote(name, safe='')}", auth=("guest", "guest"))
    answer.raise_for_status()
    info: dict[str, Any] = answer.json()
    return info


def dead_letters(settings: Settings) -> DeadLetterQueue:
    name = dlq_name(queue_name(SEND_EMAIL, settings.namespace))
    connection = Connection(settings.broker_url)
    return DeadLetterQueue(connection, name, settings.namespace, QueueOptions.of(settings))


def test_the_publisher_declares_quorum_work_queues_and_dlqs(rabbitmq_broker: BrokerEnv) -> None:
    settings = quorum_settings(rabbitmq_broker, rabbitmq_delivery_limit=7)
    with Publisher(settings) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL)
    work = queue_info(queue_name(SEND_EMAIL, settings.namespace))
    assert work["type"] == "quorum"
    assert work["arguments"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{settings.namespace}tasklane.dlx",
        "x-dead-letter-routing-key": dlq_name(work["name"]),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 7,
    }
    dead = queue_info(dlq_name(work["name"]))
    assert dead["type"] == "quorum"
    assert dead["durable"] is True


def test_redis_ignores_the_queue_type(redis_broker: BrokerEnv) -> None:
    settings = Settings(
        broker_url=redis_broker.broker_url,
        namespace=redis_broker.namespace,
        rabbitmq_queue_type="quorum",
    )
    assert QueueOptions.of(settings) == QueueOptions()


def test_a_message_handed_out_past_the_delivery_limit_lands_in_the_dlq(
    rabbitmq_broker: BrokerEnv,
) -> None:
    settings = quorum_settings(rabbitmq_broker, rabbitmq_delivery_limit=2)
    with Publisher(settings) as publisher:
        handle = publisher.publish(SEND_EMAIL, EMAIL)
    queue = queue_name(SEND_EMAIL, settings.namespace)
    deliveries = 0
    with Connection(settings.broker_url) as connection:
        channel = connection.channel()
        # A consumer that dies with the message each time: handed back, handed out again.
        while (message := channel.basic_get(queue)) is not None:
            deliveries += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
            assert deliveries <= 5, "the broker kept handing the message out"
        channel.close()
    # Handed out once and again delivery-limit times (RabbitMQ 3.x counts returns), then
    # dead-lettered with the broker's reason.
    assert deliveries == 3

    dlq = dead_letters(settings)
    try:
        letters = eventually(lambda: dlq.peek(), timeout=30, message="the dead-lettered message")
    finally:
        dlq.connection.release()
    (letter,) = letters
    assert letter.headers["id"] == handle.id
    assert letter.error == f"delivery_limit from {queue}"


@RABBITMQ_ONLY
def test_a_worker_on_quorum_queues_runs_tasks_and_dead_letters_bad_ones(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    settings = quorum_settings(broker)
    start_worker(TASKLANE_RABBITMQ_QUEUE_TYPE="quorum")
    assert queue_info(queue_name(SEND_EMAIL, settings.namespace))["type"] == "quorum"

    subject = f"quorum {uuid.uuid4().hex[:8]}"
    with Publisher(settings) as publisher:
        publisher.publish(SEND_EMAIL, {**EMAIL, "subject": subject})
    bad = send_raw(broker, SEND_EMAIL.queue, encode_body({**EMAIL, "to": ["nope"]}))

    smtp_sink.wait_for(1, timeout=60)
    assert [mail.message["Subject"] for mail in smtp_sink.messages] == [subject]
    dlq = dead_letters(settings)
    try:
        letters = eventually(lambda: dlq.peek(), timeout=60, message="the invalid payload")
    finally:
        dlq.connection.release()
    (letter,) = letters
    assert letter.headers["id"] == bad
    assert letter.reason == "invalid-payload"
