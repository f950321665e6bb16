"""``publish_many``: a list is validated whole before anything is sent, a stream a batch at a
time in flat memory, and what it returns holds no handle until asked."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tasklane.errors import PayloadValidationError
from tasklane.publish import Publisher
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.routing import queue_name
from tests.support.harness import BrokerEnv
from tests.support.plain_contracts import PLAIN_ECHO

pytestmark = pytest.mark.integration


def _payloads(count: int, bad_at: int | None = None) -> Iterator[dict[str, Any]]:
    for n in range(count):
        yield {"n": n, "text": "x"} if n != bad_at else {"n": "not a number", "text": "x"}


def _waiting(broker: BrokerEnv) -> list[bytes]:
    client = redis.Redis.from_url(broker.broker_url)
    queue = queue_name(PLAIN_ECHO, broker.namespace)
    return [item for key in redis_queue_keys(queue) for item in client.lrange(key, 0, -1)]


def test_a_stream_stops_at_an_invalid_payload_with_the_batches_before_it_sent(
    redis_broker: BrokerEnv,
) -> None:
    with (
        Publisher(redis_broker.settings) as publisher,
        pytest.raises(PayloadValidationError) as caught,
    ):
        publisher.publish_many(PLAIN_ECHO, _payloads(3000, bad_at=1500), batch_size=1000)

    assert [(p.item, p.field) for p in caught.value.problems] == [("[1500]", "n")]
    assert caught.value.sent == 1000
    assert len(_waiting(redis_broker)) == 1000


def test_a_list_with_an_invalid_payload_sends_nothing(redis_broker: BrokerEnv) -> None:
    with (
        Publisher(redis_broker.settings) as publisher,
        pytest.raises(PayloadValidationError) as caught,
    ):
        publisher.publish_many(PLAIN_ECHO, list(_payloads(3000, bad_at=2500)), batch_size=1000)

    assert [p.item for p in caught.value.problems] == ["[2500]"]
    assert caught.value.sent == 0
    assert _waiting(redis_broker) == []


def test_a_stream_short_of_task_ids_stops_before_the_batch_without_them(
    redis_broker: BrokerEnv,
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(150)]
    with Publisher(redis_broker.settings) as publisher, pytest.raises(ValueError, match="150"):
        publisher.publish_many(PLAIN_ECHO, _payloads(300), batch_size=100, task_ids=ids)
    assert len(_waiting(redis_broker)) == 100


def test_the_tasks_returned_are_the_tasks_sent_in_order(redis_broker: BrokerEnv) -> None:
    with Publisher(redis_broker.settings) as publisher:
        tasks = publisher.publish_many(PLAIN_ECHO, _payloads(2500), batch_size=1000)
    sent = [json.loads(item)["headers"]["id"] for item in _waiting(redis_broker)]

    assert len(tasks) == 2500
    assert tasks.ids == list(reversed(sent))  # LPUSH: the newest is at the head
    assert len(set(tasks.ids)) == 2500
    assert all(uuid.UUID(task_id).version == 4 for task_id in tasks.ids)
    assert tasks[-1].id == tasks.ids[2499]
    assert [handle.id for handle in tasks[10:13]] == tasks.ids[10:13]
    assert tasks[0].contract is PLAIN_ECHO
    with pytest.raises(IndexError):
        tasks[2500]


def _peak_bytes(publisher: Publisher, count: int) -> int:
    tracemalloc.start()
    try:
        tasks = publisher.publish_many(PLAIN_ECHO, _payloads(count), batch_size=500)
        assert len(tasks) == count
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_stream_publishes_in_memory_that_does_not_grow_with_its_length(
    redis_broker: BrokerEnv,
) -> None:
    with Publisher(redis_broker.settings) as publisher:
        publisher.publish_many(PLAIN_ECHO, _payloads(10))  # connected, queue declared
        short = _peak_bytes(publisher, 2_000)
        long = _peak_bytes(publisher, 40_000)

    # Twenty times the messages; a handle or an envelope held per message would be twenty
    # times the memory (about 1 KB each), not the same batch's worth.
    assert long < short * 1.5 + 256 * 1024, (short, long)
    assert len(_waiting(redis_broker)) == 42_010
