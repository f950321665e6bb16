"""The publisher writes Kombu's Redis envelope itself: held against Kombu's own, and consumed by a
plain Celery worker as well as by Tasklane's."""

from __future__ import annotations

import base64
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from tasklane.contracts import REGISTRY
from tasklane.publish import Publisher
from tasklane.wire.broker import connect, redis_queue_keys
from tasklane.wire.headers import PUBLISHED_AT
from tasklane.wire.protocol import (
    TaskMessage,
    body_from_json,
    kwargs_repr,
    task_message,
)
from tasklane.wire.redis_envelope import EnvelopeWriter, envelope
from tasklane.wire.routing import MAX_PRIORITY, QueueOptions, queue_name, work_queue
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup, publish_through_kombu
from tests.support.plain_contracts import PLAIN_ECHO, EchoPayload

pytestmark = pytest.mark.integration

#: Text that a template writer could get wrong: quotes, a format sign, a line separator, emoji.
AWKWARD = 'say "hi" 100% \\ \u2028 \u00e9 \U0001f680 %(id)s {0}'


def _pushed(broker: BrokerEnv, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """Every envelope waiting in ``queue``'s lists, oldest first, with the list it is in."""
    client = redis.Redis.from_url(broker.broker_url)
    return [
        (key, json.loads(item))
        for key in redis_queue_keys(queue)
        for item in reversed(client.lrange(key, 0, -1))
    ]


def _kombu_pushed(broker: BrokerEnv, queue: str, message: TaskMessage) -> tuple[str, Any]:
    """What Kombu's ``Producer.publish`` pushes for ``message``, as Tasklane sent it before."""
    with connect(broker.settings) as connection:
        work_queue(PLAIN_ECHO, broker.namespace, QueueOptions.of(broker.settings)).bind(
            connection.default_channel
        ).declare()
        publish_through_kombu(connection, message, queue)
    ((key, raw),) = _pushed(broker, queue)
    redis.Redis.from_url(broker.broker_url).delete(*redis_queue_keys(queue))
    return key, raw


def _without_tag(raw: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(raw["properties"].pop("delivery_tag"), str)
    return raw


def test_an_envelope_of_a_stored_message_is_the_one_kombu_pushes(redis_broker: BrokerEnv) -> None:
    queue = queue_name(PLAIN_ECHO, redis_broker.namespace)
    message = task_message(
        PLAIN_ECHO.name,
        "id-1",
        {"n": 1, "text": AWKWARD},
        priority=3,
        countdown=30,
        expires=60,
    )
    message.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    kombu_key, kombu_raw = _kombu_pushed(redis_broker, queue, message)

    mine = envelope(queue, message)

    assert mine.key == kombu_key == f"{queue}:3"
    assert _without_tag(json.loads(mine.data)) == _without_tag(kombu_raw)


@pytest.mark.parametrize(
    "task_id", ["0b9e1f64-5c0e-4a8e-9d2f-6c1f9e2a7b31", 'chosen "id" 100%', "\u00e9t\u00e9-1"]
)
def test_a_templated_envelope_is_the_one_kombu_pushes(
    redis_broker: BrokerEnv, task_id: str
) -> None:
    queue = queue_name(PLAIN_ECHO, redis_broker.namespace)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    body = body_from_json(EchoPayload(n=7, text=AWKWARD).model_dump_json().encode())
    message = task_message(PLAIN_ECHO.name, task_id, body, priority=5, published_at=1.5e9 + 0.25)
    message.headers.update(trace)
    kombu_key, kombu_raw = _kombu_pushed(redis_broker, queue, message)

    writer = EnvelopeWriter(queue, PLAIN_ECHO.name, priority=5, headers=trace)
    first, second = (writer.write(task_id, body, kwargs_repr(body), 1.5e9 + 0.25) for _ in "ab")

    assert first.key == kombu_key
    first_raw, second_raw = json.loads(first.data), json.loads(second.data)
    assert first_raw["properties"]["delivery_tag"] != second_raw["properties"]["delivery_tag"]
    assert _without_tag(first_raw) == _without_tag(kombu_raw)


def test_publish_and_publish_many_push_what_kombu_would(redis_broker: BrokerEnv) -> None:
    queue = queue_name(PLAIN_ECHO, redis_broker.namespace)
    with Publisher(redis_broker.settings) as publisher:
        single = publisher.publish(PLAIN_ECHO, {"n": 0, "text": AWKWARD})
        listed = publisher.publish_many(PLAIN_ECHO, [{"n": 1, "text": "a"}, {"n": 2, "text": "b"}])
        streamed = publisher.publish_many(
            PLAIN_ECHO, ({"n": n, "text": "c"} for n in (3, 4, 5)), batch_size=2
        )
    pushed = _pushed(redis_broker, queue)
    redis.Redis.from_url(redis_broker.broker_url).delete(*redis_queue_keys(queue))
    ids = [single.id, *(h.id for h in listed), *(h.id for h in streamed)]

    assert [raw["headers"]["id"] for _, raw in pushed] == ids
    for (key, raw), n in zip(pushed, range(6), strict=True):
        # Each as Kombu pushes the same message (its id, body and publish time).
        body = base64.b64decode(raw["body"])
        assert json.loads(body)[1]["n"] == n
        message = task_message(
            PLAIN_ECHO.name,
            raw["headers"]["id"],
            body,
            priority=MAX_PRIORITY - PLAIN_ECHO.priority,
            published_at=raw["headers"][PUBLISHED_AT],
        )
        kombu_key, kombu_raw = _kombu_pushed(redis_broker, queue, message)
        assert key == kombu_key
        assert _without_tag(raw) == _without_tag(kombu_raw)


def test_a_publish_with_a_countdown_an_expiry_headers_and_a_trace_pushes_what_kombu_would(
    redis_broker: BrokerEnv,
) -> None:
    queue = queue_name(PLAIN_ECHO, redis_broker.namespace)
    caller = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1)
    )
    token = otel_context.attach(set_span_in_context(NonRecordingSpan(caller)))
    try:
        with Publisher(redis_broker.settings) as publisher:
            before = datetime.now(UTC)
            handle = publisher.publish(
                PLAIN_ECHO,
                {"n": 9, "text": AWKWARD},
                priority=2,
                countdown=30,
                expires=60,
                headers={"x-origin": AWKWARD},
            )
            after = datetime.now(UTC)
    finally:
        otel_context.detach(token)
    ((key, raw),) = _pushed(redis_broker, queue)
    redis.Redis.from_url(redis_broker.broker_url).delete(*redis_queue_keys(queue))
    headers = raw["headers"]

    assert headers["id"] == handle.id
    assert before + timedelta(seconds=30) <= datetime.fromisoformat(headers["eta"])
    assert datetime.fromisoformat(headers["eta"]) <= after + timedelta(seconds=30)
    assert before + timedelta(seconds=60) <= datetime.fromisoformat(headers["expires"])
    assert datetime.fromisoformat(headers["expires"]) <= after + timedelta(seconds=60)
    assert headers["x-origin"] == AWKWARD
    assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    # The same message sent by Kombu (its times, its trace context) is pushed the same.
    message = task_message(
        PLAIN_ECHO.name,
        handle.id,
        base64.b64decode(raw["body"]),
        priority=MAX_PRIORITY - 2,
        published_at=headers[PUBLISHED_AT],
    )
    message.headers.update(
        {
            "eta": headers["eta"],
            "expires": headers["expires"],
            "x-origin": AWKWARD,
            **{name: headers[name] for name in ("traceparent", "tracestate") if name in headers},
        }
    )
    kombu_key, kombu_raw = _kombu_pushed(redis_broker, queue, message)
    assert key == kombu_key == f"{queue}:{MAX_PRIORITY - 2}"
    assert _without_tag(raw) == _without_tag(kombu_raw)


@pytest.fixture
def plain_worker(broker: BrokerEnv, tmp_path: Path) -> Iterator[WorkerProcess]:
    command = [
        sys.executable, "-m", "celery", "-A", "tests.support.plain_celery_service", "worker",
        "--pool", "solo", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-n", f"plain-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    worker = WorkerProcess.from_command(command, broker.env(), tmp_path / "plain.log")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
        cleanup(broker, REGISTRY.extended(PLAIN_ECHO))  # its queue, on RabbitMQ


def test_a_plain_celery_worker_runs_what_the_publisher_sends(
    broker: BrokerEnv, plain_worker: WorkerProcess
) -> None:
    with Publisher(broker.settings) as publisher:
        handles = [
            publisher.publish(PLAIN_ECHO, {"n": -1, "text": AWKWARD}),
            *publisher.publish_many(
                PLAIN_ECHO, [{"n": n, "text": AWKWARD} for n in range(150)], batch_size=64
            ),
            *publisher.publish_many(
                PLAIN_ECHO, ({"n": n, "text": "streamed"} for n in range(150, 300)), batch_size=64
            ),
        ]
        results = [handle.get(timeout=60) for handle in handles]

    assert (results[0].n, results[0].text) == (-1, AWKWARD)
    assert [r.n for r in results[1:]] == list(range(300))
    assert {r.text for r in results[1:151]} == {AWKWARD}
