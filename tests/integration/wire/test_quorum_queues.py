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
from celery import Celery
from kombu import Connection

from tasklane.contracts import SEND_EMAIL, SEND_IM
from tasklane.errors import SettingsError
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane.wire.deadletter import DeadLetterQueue
from tasklane.wire.protocol import encode_body
from tasklane.wire.routing import QueueOptions, dlq_name, queue_name
from tasklane_dev.sinks import Reply, SmtpSink, WebhookSink
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


@RABBITMQ_ONLY
def test_a_retry_waits_in_the_broker_and_leaves_the_worker_free(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    # One slot, one prefetched message: a retry the worker held until its countdown (what Celery
    # does with classic queues) would keep every other message of the queue waiting, because
    # a quorum queue takes no global QoS that could make room for it.
    worker = start_worker(
        concurrency=1, TASKLANE_RABBITMQ_QUEUE_TYPE="quorum", TASKLANE_PREFETCH_MULTIPLIER="1"
    )
    settings = quorum_settings(broker)
    webhook_sink.script(Reply(status=429, headers={"Retry-After": "600"}))
    url = f"{webhook_sink.url}/hook"
    with Publisher(settings) as publisher:
        later = publisher.publish(SEND_IM, {"channel": "slack", "url": url, "text": "later"})
        webhook_sink.wait_for(1, timeout=60)  # refused: retried in 600 s
        now = publisher.publish(SEND_IM, {"channel": "slack", "url": url, "text": "now"})
        assert now.get(timeout=60).status_code == 200
    assert not later.ready()
    control = Celery(broker=broker.broker_url)
    replies = eventually(
        lambda: control.control.inspect(destination=[worker.node], timeout=2).scheduled(),
        timeout=30,
        message="the worker's answer",
    )
    assert replies == {worker.node: []}  # not held by the worker: by the broker
    # The retry is in one of the delay levels (their counts reach the management API within
    # its statistics interval).
    eventually(
        lambda: sum(queue.get("messages", 0) for queue in _delay_levels()) >= 1,
        timeout=30,
        message="the retry in a delay level",
    )


def _delay_levels() -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{MANAGEMENT}/queues/%2F",
        params={"name": "^celery_delayed_[0-9]+$", "use_regex": "true"},
        auth=("guest", "guest"),
    )
    answer.raise_for_status()
    levels: list[dict[str, Any]] = answer.json()
    return levels


@RABBITMQ_ONLY
def test_a_countdown_waits_in_the_broker_and_runs_after_it(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    worker = start_worker(
        concurrency=1, TASKLANE_RABBITMQ_QUEUE_TYPE="quorum", TASKLANE_PREFETCH_MULTIPLIER="1"
    )
    settings = quorum_settings(broker)
    control = Celery(broker=broker.broker_url)
    with Publisher(settings) as publisher:
        later = publisher.publish(SEND_EMAIL, {**EMAIL, "subject": "later"}, countdown=30)
        now = publisher.publish(SEND_EMAIL, {**EMAIL, "subject": "now"})
        now.get(timeout=25)
        # The worker took "now" after "later" was sent, and holds nothing: the broker does.
        replies = control.control.inspect(destination=[worker.node], timeout=5).scheduled()
        assert replies == {worker.node: []}
        assert not later.ready()
        later.get(timeout=90)
    assert sorted(mail.message["Subject"] for mail in smtp_sink.wait_for(2)) == ["later", "now"]


def test_a_queue_of_the_other_type_is_named_with_what_to_do(rabbitmq_broker: BrokerEnv) -> None:
    classic = rabbitmq_broker.settings.model_copy(update={"rabbitmq_queue_type": "classic"})
    with Publisher(classic) as publisher:  # as an earlier release declared it
        publisher.publish(SEND_EMAIL, EMAIL)
    with (
        Publisher(quorum_settings(rabbitmq_broker)) as publisher,
        pytest.raises(SettingsError) as refused,
    ):
        publisher.publish(SEND_EMAIL, EMAIL)
    queue = queue_name(SEND_EMAIL, rabbitmq_broker.namespace)
    assert str(refused.value) == (
        f"queue '{queue}' was declared on the broker for another TASKLANE_RABBITMQ_QUEUE_TYPE "
        "than quorum: drain it, delete it and its exchange (both are declared again), or set "
        "TASKLANE_RABBITMQ_QUEUE_TYPE to what they were declared with; "
        "docs/configuration.md#tasklane_rabbitmq_queue_type"
    )
