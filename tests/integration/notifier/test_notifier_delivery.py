"""The notifier delivers over real SMTP and HTTP, on Redis and on RabbitMQ."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from notifier.webhooks import verify_signature
from tasklane.errors import TaskFailedError
from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, SmtpSink, WebhookSink
from tests.support import eventually
from tests.support.harness import (
    BrokerEnv,
    WorkerProcess,
    dead_letters,
    wait_for_dead_letters,
)

#: What the notifier logs when a run finds its idempotency key held by another.
HELD = "idempotency key held by task"

SECRETS = json.dumps({"ding": "SEC-ding-secret", "hook": "hook-key"})


def test_email_arrives_with_headers_and_both_bodies(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    start_worker()
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(
            "notifier.email.send",
            {
                "to": ["ada@example.com"],
                "cc": ["grace@example.com"],
                "bcc": ["audit@example.com"],
                "sender": "ops@example.org",
                "reply_to": "help@example.org",
                "subject": "Welcome, Ada",
                "template": "welcome",
                "context": {"name": "<Ada>", "product": "Tasklane"},
                "headers": {"List-Unsubscribe": "<mailto:unsubscribe@example.org>"},
            },
        )
        result = handle.get(timeout=20)
    (mail,) = smtp_sink.wait_for(1)
    message = mail.message
    assert mail.sender == "ops@example.org"
    assert sorted(mail.recipients) == ["ada@example.com", "audit@example.com", "grace@example.com"]
    assert message["To"] == "ada@example.com" and message["Cc"] == "grace@example.com"
    assert message["Bcc"] is None  # Bcc recipients stay in the envelope only
    assert message["Subject"] == "Welcome, Ada"
    assert message["Reply-To"] == "help@example.org"
    assert message["List-Unsubscribe"] == "<mailto:unsubscribe@example.org>"
    assert message["Message-ID"] == result.message_id
    assert message["Date"] is not None
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "Hello <Ada>" in text.get_content()  # plain text is not escaped
    assert "&lt;Ada&gt;" in html.get_content()  # HTML is autoescaped
    assert sorted(result.accepted) == sorted(mail.recipients)
    assert handle.ready() and handle.state == "SUCCESS"


def test_im_channels_are_signed_and_shaped_per_provider(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    start_worker(TASKLANE_NOTIFIER_SECRETS=SECRETS)
    with Publisher(broker.settings) as publisher:
        handles = [
            publisher.publish(
                "notifier.im.send",
                {"channel": "dingtalk", "url": f"{webhook_sink.url}/robot/send?access_token=abc",
                 "text": "disk almost full", "secret_ref": "ding"},
            ),
            publisher.publish(
                "notifier.im.send",
                {"channel": "slack", "url": f"{webhook_sink.url}/services/T/B/X",
                 "title": "Deploy", "text": "v2 is live"},
            ),
            publisher.publish(
                "notifier.im.send",
                {"channel": "webhook", "url": f"{webhook_sink.url}/generic", "text": "hello",
                 "secret_ref": "hook"},
            ),
        ]  # fmt: skip
        results = [h.get(timeout=20) for h in handles]
    assert [r.status_code for r in results] == [200, 200, 200]
    by_path = {r.path: r for r in webhook_sink.wait_for(3)}

    ding = by_path["/robot/send"]
    query = ding.query
    assert query["access_token"] == "abc"
    timestamp = query["timestamp"]
    assert abs(int(timestamp) / 1000 - time.time()) < 60
    digest = hmac.new(
        b"SEC-ding-secret", f"{timestamp}\nSEC-ding-secret".encode(), hashlib.sha256
    ).digest()
    assert query["sign"] == base64.b64encode(digest).decode()
    assert ding.json() == {"msgtype": "text", "text": {"content": "disk almost full"}}

    slack = by_path["/services/T/B/X"]
    assert "v2 is live" in slack.json()["text"] and "Deploy" in slack.json()["text"]

    generic = by_path["/generic"]
    assert generic.json()["text"] == "hello"
    assert verify_signature(
        "hook-key",
        generic.headers["x-tasklane-timestamp"],
        generic.body,
        generic.headers["x-tasklane-signature"],
    )
    assert not verify_signature(
        "wrong-key",
        generic.headers["x-tasklane-timestamp"],
        generic.body,
        generic.headers["x-tasklane-signature"],
    )


def test_server_error_is_retried_and_delivered_once(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    start_worker()
    webhook_sink.script(Reply(status=500, body=b"upstream down"))
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(
            "notifier.im.send",
            {"channel": "slack", "url": f"{webhook_sink.url}/hook", "text": "retry me"},
        )
        result = handle.get(timeout=30)
    assert result.status_code == 200
    requests = webhook_sink.wait_for(2)
    time.sleep(1)
    assert len(webhook_sink.requests) == 2  # one failure, one success, nothing more
    assert requests[0].body == requests[1].body
    assert dead_letters(broker, "notifier.im") == []


def test_429_retry_after_delay_is_honoured(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    start_worker()
    webhook_sink.script(Reply(status=429, headers={"Retry-After": "4"}))
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(
            "notifier.im.send",
            {"channel": "slack", "url": f"{webhook_sink.url}/hook", "text": "later"},
        )
        assert handle.get(timeout=30).status_code == 200
    first, second = webhook_sink.wait_for(2)
    assert second.received_at - first.received_at >= 4.0
    assert first.body == second.body


def test_client_error_fails_at_once_into_the_dlq(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    start_worker()
    webhook_sink.script(Reply(status=400, body=b'{"error": "invalid_payload"}'))
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(
            "notifier.im.send",
            {"channel": "slack", "url": f"{webhook_sink.url}/hook", "text": "bad"},
        )
        with pytest.raises(TaskFailedError, match="400"):
            handle.get(timeout=20)
    (letter,) = wait_for_dead_letters(broker, "notifier.im", 1)
    assert len(webhook_sink.requests) == 1  # no retry
    assert letter.reason == "permanent-error"
    assert letter.error_type == "PermanentError"
    assert "400" in letter.error and "invalid_payload" in letter.error
    assert letter.attempts == 1
    assert letter.task == "notifier.im.send" and letter.task_id == handle.id
    assert letter.payload()[1]["text"] == "bad"  # the original payload travels along
    assert letter.failed_at and letter.published_at


def test_same_idempotency_key_is_delivered_once(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    start_worker()
    payload = {
        "to": ["ada@example.com"],
        "subject": "Your invoice",
        "text": "Invoice 42",
        "idempotency_key": "invoice-42",
    }
    with Publisher(broker.settings) as publisher:
        first = publisher.publish("notifier.email.send", payload).get(timeout=20)
        second = publisher.publish("notifier.email.send", payload).get(timeout=20)
    time.sleep(0.5)
    assert len(smtp_sink.messages) == 1
    assert not first.deduplicated and second.deduplicated
    assert second.message_id == first.message_id


def test_concurrent_publishes_of_one_key_deliver_once(broker: BrokerEnv, tmp_path: Path) -> None:
    def slow_server(recipients: list[str]) -> None:
        # The first delivery is held until the second run has found the key held: waited for,
        # not slept, as a busy machine may start the second run late.
        eventually(
            lambda: HELD in worker.output(),
            timeout=30,
            message="the second run to find the idempotency key held",
        )

    with SmtpSink(before_data=slow_server) as sink:
        env = {**broker.env(), "TASKLANE_NOTIFIER_SMTP_PORT": str(sink.port)}
        worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=2)
        try:
            worker.wait_ready()
            payload = {"to": ["ada@example.com"], "subject": "Once", "text": "only once",
                       "idempotency_key": "once-1"}  # fmt: skip
            with Publisher(broker.settings) as publisher:
                handles = [publisher.publish("notifier.email.send", payload) for _ in range(2)]
                results = [h.get(timeout=40) for h in handles]
        finally:
            worker.stop()
    assert len(sink.messages) == 1
    assert sorted(r.deduplicated for r in results) == [False, True]
    assert results[0].message_id == results[1].message_id
    assert HELD in worker.output()


def test_webhook_to_an_internal_address_is_refused_without_a_request(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    start_worker(TASKLANE_NOTIFIER_WEBHOOK_ALLOW="")  # no exception for the loopback sink
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(
            "notifier.im.send",
            {"channel": "slack", "url": f"{webhook_sink.url}/hook", "text": "to the inside"},
        )
        with pytest.raises(TaskFailedError, match="loopback"):
            handle.get(timeout=20)
    (letter,) = wait_for_dead_letters(broker, "notifier.im", 1)
    assert letter.reason == "permanent-error"
    assert letter.error_type == "UnsafeURLError"
    time.sleep(0.5)
    assert webhook_sink.requests == []
