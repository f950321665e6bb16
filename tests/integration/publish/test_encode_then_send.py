"""A message encoded now and sent later (an outbox's path) runs as if it had been published."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasklane.contracts import SEND_EMAIL
from tasklane.errors import PayloadValidationError
from tasklane.publish import Publisher
from tasklane.wire.broker import connect
from tasklane.wire.protocol import TaskMessage
from tasklane.wire.routing import QueueOptions, work_queue
from tasklane_dev.sinks import SmtpSink
from tests.support import eventually
from tests.support.harness import BrokerEnv

pytestmark = pytest.mark.integration

EMAIL = {"to": ["ada@example.com"], "subject": "Order 12", "text": "stored, then sent"}


def taken_ids(broker: BrokerEnv, count: int) -> list[str]:
    """The task ids of the first ``count`` emails waiting in the namespace's queue, taken."""
    ids = []
    with connect(broker.settings) as connection:
        queue = connection.SimpleQueue(
            work_queue(SEND_EMAIL, broker.namespace, QueueOptions.of(broker.settings))
        )
        try:
            for _ in range(count):
                message = queue.get(timeout=10)
                ids.append(message.headers["id"])
                message.ack()
        finally:
            queue.close()
    return ids


def test_an_encoded_message_stored_as_json_and_sent_later_is_delivered(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    with Publisher(broker.settings) as publisher:
        message = publisher.encode(SEND_EMAIL, EMAIL, task_id="order-12-email")
        stored = json.dumps(message.to_json())  # what an outbox row keeps
    start_worker()
    with Publisher(broker.settings) as relay:
        relay.send(SEND_EMAIL.name, [TaskMessage.from_json(json.loads(stored))])
        result = relay.handle(SEND_EMAIL, "order-12-email").get(timeout=30)
    assert result.accepted == ["ada@example.com"]
    eventually(lambda: smtp_sink.messages, timeout=10, message="the email at the sink")
    assert smtp_sink.messages[0].message["Subject"] == "Order 12"


def test_encode_refuses_a_bad_payload_naming_the_field(broker: BrokerEnv) -> None:
    with Publisher(broker.settings) as publisher:
        with pytest.raises(PayloadValidationError, match="subject"):
            publisher.encode(SEND_EMAIL, {"to": ["ada@example.com"], "text": "no subject"})
        with pytest.raises(ValueError, match="set by workers only"):
            publisher.encode(SEND_EMAIL, EMAIL, headers={"x-tasklane-busy-waits": "4"})


def test_a_task_message_survives_its_json_form() -> None:
    message = TaskMessage("t-1", '[[],{"a":"é"},{}]'.encode(), {"id": "t-1"}, {"priority": 4})
    assert TaskMessage.from_json(json.loads(json.dumps(message.to_json()))) == message


def test_publish_many_sends_under_the_task_ids_the_caller_chose(broker: BrokerEnv) -> None:
    ids = ["batch-1-a", "batch-1-b"]
    with Publisher(broker.settings) as publisher:
        with pytest.raises(ValueError, match="2 task ids for 1 payloads"):
            publisher.publish_many(SEND_EMAIL, [EMAIL], task_ids=ids)
        handles = publisher.publish_many(SEND_EMAIL, [EMAIL, EMAIL], task_ids=ids)
        sent = taken_ids(broker, 2)
    assert [handle.id for handle in handles] == ids
    assert sorted(sent) == ids
