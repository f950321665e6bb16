"""Envelopes an upstream pushes to Redis by hand: each is consumed or dead-lettered, none is lost.

On Redis a worker's BRPOP takes the message off its list before Kombu reads it, so an envelope
Kombu could not read used to vanish (``KeyError('exchange')``, the connection dropped).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tasklane.contracts import SEND_EMAIL
from tasklane.wire.protocol import encode_body, task_headers
from tasklane.wire.routing import queue_name
from tasklane_dev.sinks import SmtpSink
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup, wait_for_dead_letters

EMAIL = {"to": ["ada@example.com"], "subject": "by hand", "text": "pushed"}


@pytest.fixture
def broker(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis only (the workers of start_worker use it too): envelopes are how Kombu's Redis
    transport stores messages, and RabbitMQ has none."""
    env = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield env
    cleanup(env)


@pytest.fixture
def redis_broker(broker: BrokerEnv) -> BrokerEnv:
    return broker


@pytest.fixture
def client(redis_broker: BrokerEnv) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_broker.broker_url) as connection:
        yield connection


def envelope(task_id: str, body: bytes | None = None, **changes: Any) -> dict[str, Any]:
    """The envelope docs/protocol.md shows, with ``changes`` applied (``None`` removes a key)."""
    raw: dict[str, Any] = {
        "body": base64.b64encode(body or encode_body(EMAIL)).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task_headers(SEND_EMAIL.name, task_id),
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
        },
    }
    for key, value in changes.items():
        target = (
            raw["properties"] if key in ("delivery_tag", "delivery_info", "body_encoding") else raw
        )
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return raw


def push(client: redis.Redis, env: BrokerEnv, raw: Any) -> None:
    client.lpush(queue_name(SEND_EMAIL, env.namespace), json.dumps(raw))


def test_an_envelope_without_delivery_info_or_tag_is_consumed(
    redis_broker: BrokerEnv, client: redis.Redis, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    worker: WorkerProcess = start_worker()
    without_info, without_tag = str(uuid.uuid4()), str(uuid.uuid4())
    push(client, redis_broker, envelope(without_info))  # no delivery_info at all
    push(client, redis_broker, envelope(without_tag, delivery_tag=None))
    mails = smtp_sink.wait_for(2, timeout=30)
    assert len(mails) == 2
    results = Celery(broker=redis_broker.broker_url, backend=redis_broker.result_backend)
    try:
        for task_id in (without_info, without_tag):
            assert results.AsyncResult(task_id).get(timeout=20)["accepted"] == ["ada@example.com"]
    finally:
        results.close()
    assert worker.process.poll() is None
    assert "KeyError" not in worker.output()


def test_a_typo_in_the_routing_key_dead_letters_to_the_queue_it_was_consumed_from(
    redis_broker: BrokerEnv, client: redis.Redis, start_worker: Any
) -> None:
    start_worker()
    task_id = str(uuid.uuid4())
    typo = {"exchange": "", "routing_key": f"{redis_broker.namespace}notifier.emial"}
    push(client, redis_broker, envelope(task_id, body=b'[[], {"to": []}]', delivery_info=typo))
    (letter,) = wait_for_dead_letters(redis_broker, "notifier.email", 1)
    assert letter.task_id == task_id
    assert letter.reason == "invalid-message"
    assert letter.queue == queue_name(SEND_EMAIL, redis_broker.namespace)
    assert not client.exists(f"{redis_broker.namespace}notifier.emial.dlq")


UNREADABLE = {
    "a JSON array": (["not", "an", "envelope"], "must be a JSON object"),
    "no properties": ({"body": "x", "headers": {}}, "no properties object"),
    "a numeric body": (
        {"body": 42, "headers": {}, "properties": {"delivery_tag": "t"}},
        "body must be a string",
    ),
    "headers not an object": (
        {"body": "", "headers": ["task"], "properties": {"delivery_tag": "t"}},
        "headers must be an object",
    ),
    "broken base64": (None, "not valid base64"),
    "an unknown body encoding": (None, "is not base64"),
}


def test_a_list_item_that_is_not_json_is_dead_lettered_with_its_bytes(
    redis_broker: BrokerEnv, client: redis.Redis, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    worker: WorkerProcess = start_worker()
    items = [b"hello, worker", b"\xff\xfe not utf-8", b'{"body": "cut off']
    for item in items:
        client.lpush(queue_name(SEND_EMAIL, redis_broker.namespace), item)
    letters = wait_for_dead_letters(redis_broker, "notifier.email", len(items))
    assert sorted(letter.body for letter in letters) == sorted(items)
    assert {letter.error for letter in letters} == {"the Redis list item is not JSON"}
    assert {letter.reason for letter in letters} == {"invalid-message"}
    # The worker goes on.
    push(client, redis_broker, envelope(str(uuid.uuid4())))
    assert len(smtp_sink.wait_for(1, timeout=30)) == 1
    assert worker.process.poll() is None


def test_unreadable_envelopes_are_dead_lettered_with_the_problem_and_fail_their_task(
    redis_broker: BrokerEnv, client: redis.Redis, smtp_sink: SmtpSink, start_worker: Any
) -> None:
    worker: WorkerProcess = start_worker()
    broken_base64, unknown_encoding = str(uuid.uuid4()), str(uuid.uuid4())
    for name, (raw, _) in UNREADABLE.items():
        if name == "broken base64":
            raw = envelope(broken_base64)
            raw["body"] = "%%% not base64 %%%"
        elif name == "an unknown body encoding":
            raw = envelope(unknown_encoding, body_encoding="rot13")
        push(client, redis_broker, raw)

    letters = wait_for_dead_letters(redis_broker, "notifier.email", len(UNREADABLE))
    errors = sorted(letter.error for letter in letters)
    for _, expected in UNREADABLE.values():
        assert any(expected in error for error in errors), (expected, errors)
    assert {letter.reason for letter in letters} == {"invalid-message"}
    # The dead letter keeps what was sent, whole.
    sent = [json.loads(letter.body) for letter in letters]
    assert ["not", "an", "envelope"] in sent
    # A caller polling the task id learns that it failed, and why.
    results = Celery(broker=redis_broker.broker_url, backend=redis_broker.result_backend)
    try:
        for task_id, text in ((broken_base64, "base64"), (unknown_encoding, "rot13")):
            result = results.AsyncResult(task_id)
            assert result.state == "FAILURE"
            assert text in str(result.result)
    finally:
        results.close()
    # The worker goes on.
    assert worker.process.poll() is None
    push(client, redis_broker, envelope(str(uuid.uuid4())))
    assert len(smtp_sink.wait_for(1, timeout=30)) == 1
