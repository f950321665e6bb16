"""Upstreams that are not Tasklane: a plain Celery app, and a raw Kombu message per the docs."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Producer

from tasklane.contracts import SEND_EMAIL
from tasklane_dev.sinks import SmtpSink
from tests.support.harness import BrokerEnv

EMAIL = {"to": ["ada@example.com"], "subject": "From elsewhere", "text": "plain upstream"}


def _plain_app(broker: BrokerEnv) -> Celery:
    plain = Celery("upstream", broker=broker.broker_url, backend=broker.result_backend)
    plain.conf.update(task_serializer="json", accept_content=["json"])
    return plain


def test_plain_celery_send_task_by_name_and_queue_is_consumed(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    start_worker()
    plain = _plain_app(broker)
    # The documented form for every broker: Tasklane owns and declares the queue, not the upstream.
    result = plain.send_task(
        "notifier.email.send",
        kwargs=EMAIL,
        queue=f"{broker.namespace}notifier.email",
        declare=[],
    )
    value = result.get(timeout=20)
    (mail,) = smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "From elsewhere"
    assert value["accepted"] == ["ada@example.com"]
    plain.close()


def test_plain_celery_queue_option_on_redis(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    if broker.kind == "rabbitmq":
        pytest.skip(
            "RabbitMQ refuses to re-declare a queue without its dead-letter arguments; "
            "docs/protocol.md gives the declare=[] form tested above for it"
        )
    start_worker()
    plain = _plain_app(broker)
    result = plain.send_task(
        "notifier.email.send", kwargs=EMAIL, queue=f"{broker.namespace}notifier.email"
    )
    assert result.get(timeout=20)["accepted"] == ["ada@example.com"]
    assert len(smtp_sink.wait_for(1)) == 1
    plain.close()


def test_raw_kombu_message_written_per_the_documented_protocol(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    start_worker()
    task_id = str(uuid.uuid4())
    queue = f"{broker.namespace}{SEND_EMAIL.queue}"
    # Exactly the fields docs/protocol.md lists as required, written by hand.
    headers = {"lang": "py", "task": "notifier.email.send", "id": task_id, "root_id": task_id}
    body = json.dumps([[], {**EMAIL, "subject": "Raw"}, {}])
    with Connection(broker.broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange="",
            routing_key=queue,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            correlation_id=task_id,
            delivery_mode=2,
        )
    (mail,) = smtp_sink.wait_for(1)
    assert mail.message["Subject"] == "Raw"
    backend = Celery(broker=broker.broker_url, backend=broker.result_backend)
    assert backend.AsyncResult(task_id).get(timeout=10)["accepted"] == ["ada@example.com"]
    backend.close()
