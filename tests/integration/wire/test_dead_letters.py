"""Bad input that reaches a worker ends in a DLQ with its reason; the worker keeps running."""

from __future__ import annotations

import json
import pickle
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Producer

from tasklane.contracts import SEND_EMAIL
from tasklane.errors import TaskFailedError
from tasklane.publish import Publisher
from tasklane.wire.deadletter import DeadLetter, DeadLetterQueue
from tasklane.wire.protocol import encode_body, task_headers
from tasklane.wire.routing import QueueOptions, dead_letter_queue, dlq_name, work_queue
from tasklane_dev.sinks import SmtpSink
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, wait_for_dead_letters

EMAIL = {"to": ["ada@example.com"], "subject": "hi", "text": "hello"}


def send_raw(
    broker: BrokerEnv,
    queue: str,
    body: bytes | str,
    *,
    task: str = "notifier.email.send",
    content_type: str = "application/json",
    without_task_name: bool = False,
) -> str:
    """Publish bytes straight to a work queue, bypassing the publisher's validation."""
    task_id = str(uuid.uuid4())
    headers = task_headers(task, task_id)
    if without_task_name:
        del headers["task"]
    with Connection(broker.broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange="",
            routing_key=f"{broker.namespace}{queue}",
            headers=headers,
            content_type=content_type,
            content_encoding="binary" if isinstance(body, bytes) else "utf-8",
            correlation_id=task_id,
        )
    return task_id


def test_every_kind_of_bad_message_is_dead_lettered_with_its_reason(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    worker: WorkerProcess = start_worker(TASKLANE_MAX_PAYLOAD_BYTES="2048")
    ids = {
        "bad-address": send_raw(broker, "notifier.email", encode_body({**EMAIL, "to": ["nope"]})),
        "missing-field": send_raw(
            broker, "notifier.email", encode_body({"to": ["a@example.com"], "text": "x"})
        ),
        "too-large": send_raw(broker, "notifier.email", encode_body({**EMAIL, "text": "x" * 4000})),
        "unknown-task": send_raw(
            broker, "notifier.email", encode_body(EMAIL), task="notifier.fax.send"
        ),
        "pickle": send_raw(
            broker,
            "notifier.email",
            pickle.dumps(((), EMAIL, {})),
            content_type="application/x-python-serialize",
        ),
        "malformed-json": send_raw(broker, "notifier.email", b'[[], {"to": ['),
        "short-body": send_raw(broker, "notifier.email", json.dumps([[], EMAIL])),
        "object-body": send_raw(broker, "notifier.email", json.dumps(EMAIL)),
        "yaml": send_raw(
            broker,
            "notifier.email",
            "- []\n- {to: [a@example.com]}\n",
            content_type="application/x-yaml",
        ),
        "no-task-name": send_raw(
            broker, "notifier.email", encode_body(EMAIL), without_task_name=True
        ),
        "unknown-channel": send_raw(
            broker,
            "notifier.im",
            encode_body({"channel": "fax", "url": "http://127.0.0.1:9/x", "text": "hi"}),
            task="notifier.im.send",
        ),
    }
    with Publisher(broker.settings) as publisher:
        missing_variable = publisher.publish(
            "notifier.email.send",
            {"to": ["a@example.com"], "subject": "hi", "template": "welcome",
             "context": {"name": "Ada"}},
        )  # fmt: skip
        with pytest.raises(TaskFailedError, match="product"):
            missing_variable.get(timeout=20)

        email = {x.task_id: x for x in wait_for_dead_letters(broker, "notifier.email", 11)}
        im = {x.task_id: x for x in wait_for_dead_letters(broker, "notifier.im", 1)}

        expected = {
            "bad-address": ("invalid-payload", "to.0: value is not a valid email address"),
            "missing-field": ("invalid-payload", "subject: Field required"),
            "too-large": ("invalid-payload", "over the limit of 2048"),
            "unknown-task": ("unknown-task", "notifier.fax.send"),
            "pickle": ("undecodable", "application/x-python-serialize"),
            "malformed-json": ("undecodable", ""),
            "short-body": ("invalid-message", "[args, kwargs, embed]"),
            "object-body": ("invalid-message", "[args, kwargs, embed]"),
            "yaml": ("undecodable", "application/x-yaml"),
            "no-task-name": ("unknown-message", "not a Celery task message"),
        }
        for case, (reason, text) in expected.items():
            letter = email[ids[case]]
            assert letter.reason == reason, case
            assert text in letter.error, (case, letter.error)
            assert letter.error_type, case
            assert letter.failed_at, case
        assert im[ids["unknown-channel"]].reason == "invalid-payload"
        assert "channel" in im[ids["unknown-channel"]].error
        template = email[missing_variable.id]
        assert template.reason == "permanent-error"
        assert "'product' is undefined" in template.error

        # The original message travels unchanged: pickle bytes are kept, never unpickled.
        assert email[ids["pickle"]].body == pickle.dumps(((), EMAIL, {}))
        assert email[ids["malformed-json"]].body == b'[[], {"to": ['
        assert email[ids["bad-address"]].payload()[1]["to"] == ["nope"]

        # Every message refused before it ran still fails its task for anyone waiting on it,
        # with the reason: no caller polls a PENDING task forever.
        results = Celery(broker=broker.broker_url, backend=broker.result_backend)
        refused = {
            "unknown-task": "notifier.fax.send",
            "pickle": "application/x-python-serialize",
            "malformed-json": "",
            "short-body": "[args, kwargs, embed]",
            "object-body": "[args, kwargs, embed]",
            "yaml": "application/x-yaml",
            "no-task-name": "not a Celery task message",
        }
        for case, text in refused.items():
            result = results.AsyncResult(ids[case])
            assert result.state == "FAILURE", case
            assert text in str(result.result), (case, result.result)
        results.close()

        # The worker kept running: a good message is still delivered.
        assert worker.process.poll() is None
        good = publisher.publish("notifier.email.send", EMAIL).get(timeout=20)
    assert good.accepted == ["ada@example.com"]
    assert len(smtp_sink.wait_for(1)) == 1


def test_rabbitmq_dead_letters_natively_what_the_broker_rejects(
    rabbitmq_broker: BrokerEnv,
) -> None:
    broker = rabbitmq_broker
    queue = f"{broker.namespace}notifier.email"
    with Connection(broker.broker_url) as conn:
        # The queues as every Tasklane process declares them; no worker consumes here.
        for declared in (
            work_queue(SEND_EMAIL, broker.namespace, QueueOptions.of(broker.settings)),
            dead_letter_queue(SEND_EMAIL, broker.namespace, QueueOptions.of(broker.settings)),
        ):
            declared.bind(conn.default_channel).declare()
        Producer(conn.default_channel).publish(
            json.dumps([[], EMAIL, {}]),
            exchange="",
            routing_key=queue,
            headers=task_headers("notifier.email.send", "expired-1"),
            content_type="application/json",
            content_encoding="utf-8",
            expiration=0.05,  # expires unconsumed: RabbitMQ itself dead-letters it
        )

    def expired() -> list[DeadLetter]:
        with Connection(broker.broker_url) as conn:
            return [
                letter
                for letter in DeadLetterQueue(
                    conn, dlq_name(queue), broker.namespace, QueueOptions.of(broker.settings)
                ).peek()
                if letter.task_id == "expired-1"
            ]

    (letter,) = eventually(expired, timeout=10, interval=0.1, message="the expired message")
    assert letter.queue == queue
    assert "expired" in letter.error
