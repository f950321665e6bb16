"""On Redis a message is recorded as unacknowledged in the same step that takes it off its list.

Kombu's own transport pops with BRPOP and records the message once the reply is read; a worker
killed in between loses it (the fault suite found one such loss under kill -9). Here a worker
that dies after Redis answered, without reading the answer, is played by a channel whose take is
sent and whose connection is then dropped unread: the message must come back.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from tasklane.wire.config import REDIS_TRANSPORT
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def names() -> dict[str, str]:
    """A queue and unacknowledged-set keys of this test's own: restores touch nothing else."""
    tag = uuid.uuid4().hex[:10]
    return {
        "queue": f"claim-{tag}",
        "unacked_key": f"claim-{tag}-unacked",
        "unacked_index_key": f"claim-{tag}-unacked-index",
        "unacked_mutex_key": f"claim-{tag}-unacked-mutex",
    }


@pytest.fixture
def client(redis_url: str, names: dict[str, str]) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection
        keys = [key for key in connection.keys(f"{names['queue']}*")]
        if keys:
            connection.delete(*keys)


def _connection(redis_url: str, names: dict[str, str], transport: str = REDIS_TRANSPORT) -> Any:
    options = {
        "visibility_timeout": 1,
        "priority_steps": [0, 3, 6, 9],
        "queue_order_strategy": "priority",
        **{key: value for key, value in names.items() if key != "queue"},
    }
    return Connection(redis_url, transport=transport, transport_options=options)


def _queue(names: dict[str, str]) -> Queue:
    return Queue(names["queue"], Exchange(names["queue"], "direct"), names["queue"])


def _take_and_die(redis_url: str, names: dict[str, str], client: redis.Redis) -> None:
    """Send the take, wait until Redis has answered it, and drop the connection unread."""
    with _connection(redis_url, names) as connection:
        channel = connection.default_channel
        channel.basic_consume(names["queue"], False, lambda message: None, "dying")
        connection.transport.cycle.on_poll_start()  # sends the take, as the event loop does
        eventually(
            lambda: client.llen(names["queue"]) == 0,
            timeout=10,
            message="Redis to answer the take",
        )
        channel.client.connection.disconnect()  # the answer is never read


def _restore(redis_url: str, names: dict[str, str], client: redis.Redis) -> list[bytes]:
    """What a surviving worker's sweep puts back once the visibility timeout is over."""

    def restored() -> list[bytes]:
        with _connection(redis_url, names) as survivor:
            survivor.default_channel.qos.restore_visible(num=100, interval=1)
        return list(client.lrange(names["queue"], 0, -1))

    return eventually(restored, timeout=15, interval=0.2, message="the message restored")


def test_a_message_taken_by_a_worker_that_died_before_reading_it_is_restored(
    redis_url: str, names: dict[str, str], client: redis.Redis
) -> None:
    with _connection(redis_url, names) as connection:
        Producer(connection).publish(
            {"n": 1}, exchange=_queue(names).exchange, routing_key=names["queue"],
            declare=[_queue(names)], serializer="json",
        )  # fmt: skip
    _take_and_die(redis_url, names, client)
    assert client.hlen(names["unacked_key"]) == 1  # recorded by the take itself

    [item] = _restore(redis_url, names, client)
    envelope = json.loads(item)
    assert json.loads(base64.b64decode(envelope["body"])) == {"n": 1}
    assert envelope["headers"]["redelivered"] is True
    assert client.hlen(names["unacked_key"]) == 0


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(b"\xff\xfe not json, not UTF-8", id="not-json"),
        pytest.param(b'{"body": "x", "headers": [1], "properties": []}', id="unmarkable"),
        pytest.param(b'["a", "list"]', id="json-array"),
    ],
)
def test_an_item_kombu_could_not_restore_comes_back_exactly_as_it_was_pushed(
    redis_url: str, names: dict[str, str], client: redis.Redis, item: bytes
) -> None:
    client.lpush(names["queue"], item)
    _take_and_die(redis_url, names, client)
    assert _restore(redis_url, names, client) == [item]


def test_a_message_on_a_priority_list_reaches_an_idle_consumer(
    redis_url: str, names: dict[str, str], client: redis.Redis
) -> None:
    """The wait blocks on the first list only; the others are looked at again within 0.1 s."""
    received: list[Any] = []
    with _connection(redis_url, names) as connection:
        queue = _queue(names)(connection.default_channel)
        queue.declare()
        with connection.Consumer(queue, callbacks=[lambda body, m: received.append(body)]) as c:
            c.qos(prefetch_count=1)
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.3)  # idle: every list empty, waiting
            Producer(connection).publish(
                {"n": 2}, exchange=queue.exchange, routing_key=names["queue"],
                priority=9, serializer="json",
            )  # fmt: skip
            assert client.exists(f"{names['queue']}\x06\x169")  # a priority list, not the first
            eventually(
                lambda: connection.drain_events(timeout=1) or received,
                timeout=10,
                ignoring=(TimeoutError,),
                message="the prioritised message",
            )
            [message] = c.channel.qos._delivered.values()
            message.ack()
    assert received == [{"n": 2}]
    assert client.hlen(names["unacked_key"]) == 0
