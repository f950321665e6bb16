"""Copies of one delivery are recognisable at the receiver, on Redis and on RabbitMQ.

The at-least-once window (docs/reliability.md) cannot be closed for SMTP or HTTP: a worker killed
after the server took the message and before the idempotency record was written sends it again.
Every copy of one task (a retry, a redelivery, a second publish of its idempotency key) carries the
same ``Message-ID`` or ``Idempotency-Key``; the webhook's v2 signature covers that key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

from tasklane.publish import Publisher
from tasklane_dev.sinks import ReceivedRequest, Reply, SmtpSink, WebhookSink
from tests.support.harness import BrokerEnv, WorkerProcess

SECRET = "hook-key"
SECRETS = json.dumps({"hook": SECRET})
MESSAGE_ID = re.compile(r"<[0-9a-f]{32}@([a-z0-9.-]+)>")
IDEMPOTENCY_KEY = re.compile(r"[0-9a-f]{32}")


def kill_pool_children(worker: WorkerProcess) -> None:
    """SIGKILL the worker's pool children, as the OOM killer would: no exit handler runs."""
    children = worker.children()
    assert children, worker.output()
    for pid in children:
        os.kill(pid, signal.SIGKILL)


def v2_signature(secret: str, request: ReceivedRequest) -> str:
    """The documented v2 signature, recomputed independently of the notifier's code."""
    signed = b".".join(
        [
            b"v2",
            request.headers["x-tasklane-timestamp"].encode(),
            request.headers["idempotency-key"].encode(),
            request.body,
        ]
    )
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def v2_verifies(secret: str, request: ReceivedRequest, **changed_headers: str) -> bool:
    headers = {**request.headers, **changed_headers}
    altered = ReceivedRequest(request.method, request.target, headers, request.body)
    return hmac.compare_digest(
        v2_signature(secret, altered), request.headers["x-tasklane-signature-v2"]
    )


def test_email_sent_again_after_a_kill_9_past_acceptance_keeps_its_message_id(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    entered, release = threading.Event(), threading.Event()
    attempts: list[list[str]] = []

    def hold_the_first_copy(recipients: list[str]) -> str | None:
        attempts.append(recipients)
        if len(attempts) == 1:
            entered.set()
            release.wait(30)
        return None  # every copy is accepted: the first one after its sender died

    with SmtpSink(before_data=hold_the_first_copy) as sink:
        env = {**broker.env(), "TASKLANE_NOTIFIER_SMTP_PORT": str(sink.port)}
        worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=1)
        try:
            worker.wait_ready()
            with Publisher(broker.settings) as publisher:
                handle = publisher.publish(
                    "notifier.email.send",
                    {"to": ["ada@example.com"], "subject": "Receipt", "text": "Order 8",
                     "idempotency_key": "receipt-8"},
                )  # fmt: skip
                assert entered.wait(20), worker.output()
                # The message is on the server; the worker dies before the "done" record.
                kill_pool_children(worker)
                release.set()
                result = handle.get(timeout=60)  # redelivered (reject on worker lost) and sent
            first, second = sink.wait_for(2)
        finally:
            release.set()
            worker.stop()
    assert len(attempts) == 2
    assert first.message["Message-ID"] == second.message["Message-ID"] == result.message_id
    assert MESSAGE_ID.fullmatch(result.message_id)
    assert "receipt-8" not in result.message_id  # the key is hashed, never shown
    assert not result.deduplicated


def test_email_without_a_key_keeps_its_message_id_across_deliveries_of_one_task(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    start_worker(TASKLANE_NOTIFIER_MESSAGE_ID_DOMAIN="mail.example.net")
    payload = {"to": ["ada@example.com"], "subject": "No key", "text": "same task"}
    task_id = str(uuid.uuid4())
    with Publisher(broker.settings) as publisher:
        # Without a key nothing is deduplicated: both deliveries of the task id are sent.
        publisher.publish("notifier.email.send", payload, task_id=task_id)
        publisher.publish("notifier.email.send", payload, task_id=task_id)
        first, second = smtp_sink.wait_for(2)
        other = publisher.publish("notifier.email.send", payload).get(timeout=20)
    third = smtp_sink.wait_for(3)[2]
    assert first.message["Message-ID"] == second.message["Message-ID"]
    match = MESSAGE_ID.fullmatch(first.message["Message-ID"])
    assert match and match.group(1) == "mail.example.net"
    assert third.message["Message-ID"] == other.message_id != first.message["Message-ID"]


def test_email_message_ids_follow_the_idempotency_key(
    broker: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    start_worker()
    with Publisher(broker.settings) as publisher:
        results = [
            publisher.publish(
                "notifier.email.send",
                {"to": ["ada@example.com"], "subject": "Keyed", "text": text,
                 "idempotency_key": key},
            ).get(timeout=20)
            for key, text in [("invoice-1", "one"), ("invoice-2", "two")]
        ]  # fmt: skip
    received = {mail.message.get_content().strip(): mail for mail in smtp_sink.wait_for(2)}
    ids = [received[text].message["Message-ID"] for text in ("one", "two")]
    assert ids == [r.message_id for r in results]
    assert ids[0] != ids[1]
    # The configured sender's domain (tasklane@localhost) when no domain is set.
    assert all(MESSAGE_ID.fullmatch(i) and i.endswith("@localhost>") for i in ids)


def test_webhook_sent_again_after_a_kill_9_carries_the_same_signed_key(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    worker = start_worker(concurrency=1, TASKLANE_NOTIFIER_SECRETS=SECRETS)
    webhook_sink.script(Reply(delay=20))  # the receiver has the first copy; no answer comes
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/events", "text": "deployed",
               "secret_ref": "hook"}  # fmt: skip
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish("notifier.im.send", payload)
        webhook_sink.wait_for(1)
        kill_pool_children(worker)
        assert handle.get(timeout=60).status_code == 200
    first, second = webhook_sink.wait_for(2)
    key = first.headers["idempotency-key"]
    assert IDEMPOTENCY_KEY.fullmatch(key)
    assert second.headers["idempotency-key"] == key
    for copy in (first, second):
        assert v2_verifies(SECRET, copy)
        assert not v2_verifies("other-key", copy)
        assert not v2_verifies(SECRET, copy, **{"idempotency-key": "0" * 32})


def test_webhook_retry_keeps_the_key_and_the_signature_covers_it(
    broker: BrokerEnv, webhook_sink: WebhookSink, start_worker: Any
) -> None:
    start_worker(TASKLANE_NOTIFIER_SECRETS=SECRETS)
    webhook_sink.script(Reply(status=503, body=b"busy"))

    def post(key: str) -> None:
        payload = {"channel": "webhook", "url": f"{webhook_sink.url}/{key}", "text": key,
                   "secret_ref": "hook", "idempotency_key": key}  # fmt: skip
        with Publisher(broker.settings) as publisher:
            assert publisher.publish("notifier.im.send", payload).get(timeout=30).status_code == 200

    post("deploy-7")  # 503 first, then retried with a new timestamp
    post("deploy-8")
    failed, retried, other = webhook_sink.wait_for(3)
    assert [r.path for r in (failed, retried, other)] == ["/deploy-7", "/deploy-7", "/deploy-8"]
    key = failed.headers["idempotency-key"]
    assert retried.headers["idempotency-key"] == key != other.headers["idempotency-key"]
    assert "deploy-7" not in key
    for request in (failed, retried, other):
        assert v2_verifies(SECRET, request)
        tampered = request.headers["idempotency-key"][::-1]
        assert not v2_verifies(SECRET, request, **{"idempotency-key": tampered})
        # The v1 header is unchanged, so receivers that verify it keep working.
        timestamp = request.headers["x-tasklane-timestamp"]
        v1 = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256)
        assert request.headers["x-tasklane-signature"] == f"sha256={v1.hexdigest()}"
