"""The idempotency store's state machine, against real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tasklane.worker.idempotency import IdempotencyStore


@pytest.fixture
def store(redis_url: str) -> Iterator[IdempotencyStore]:
    client = redis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}."
    yield IdempotencyStore(client, namespace=namespace, done_ttl=60)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_first_claims_second_waits_then_both_see_the_result(store: IdempotencyStore) -> None:
    assert store.begin("t.a.b", "key", "task-1", claim_ttl=30).state == "claimed"
    busy = store.begin("t.a.b", "key", "task-2", claim_ttl=30)
    assert (busy.state, busy.owner) == ("busy", "task-1")
    store.complete("t.a.b", "key", "task-1", {"message_id": "<m1>"})
    for task_id in ("task-1", "task-2"):
        done = store.begin("t.a.b", "key", task_id, claim_ttl=30)
        assert done.state == "done"
        assert done.result == {"message_id": "<m1>"}


def test_a_redelivered_task_takes_its_own_claim_back(store: IdempotencyStore) -> None:
    assert store.begin("t.a.b", "key", "task-1", claim_ttl=30).state == "claimed"
    again = store.begin("t.a.b", "key", "task-1", claim_ttl=30, redelivered=True)
    assert again.state == "claimed"


def test_a_second_message_of_the_same_task_id_waits(store: IdempotencyStore) -> None:
    """Not a redelivery (an upstream's second publish): the claim is not its to take."""
    assert store.begin("t.a.b", "key", "task-1", claim_ttl=30).state == "claimed"
    second = store.begin("t.a.b", "key", "task-1", claim_ttl=30)
    assert (second.state, second.owner) == ("busy", "task-1")


def test_release_only_drops_the_owners_claim(store: IdempotencyStore) -> None:
    store.begin("t.a.b", "key", "task-1", claim_ttl=30)
    store.release("t.a.b", "key", "task-2")
    assert store.begin("t.a.b", "key", "task-2", claim_ttl=30).state == "busy"
    store.release("t.a.b", "key", "task-1")
    assert store.begin("t.a.b", "key", "task-2", claim_ttl=30).state == "claimed"


def test_an_abandoned_claim_expires(store: IdempotencyStore) -> None:
    store.begin("t.a.b", "key", "task-1", claim_ttl=0.2)
    time.sleep(0.3)
    assert store.begin("t.a.b", "key", "task-2", claim_ttl=30).state == "claimed"


def test_keys_are_per_task_and_hashed(store: IdempotencyStore) -> None:
    store.begin("t.a.b", "same", "task-1", claim_ttl=30)
    assert store.begin("t.c.d", "same", "task-2", claim_ttl=30).state == "claimed"
    assert "same" not in store.key("t.a.b", "same")
