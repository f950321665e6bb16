"""A worker's results are stored on Redis in one round trip, as Celery's backend stores them.

Each test stores results through a real Tasklane app's backend into the real Redis and reads
what Redis holds; where it says "as Celery", Celery's own ``RedisBackend``, made from the same
app and URL, stores the same thing beside it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import states
from celery.backends.redis import RedisBackend

from tasklane.wire.results import STORE_UNLESS_SUCCEEDED, RedisResults
from tasklane.worker.app import TasklaneApp, create_app
from tests.support import eventually
from tests.support.harness import BrokerEnv

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_broker: BrokerEnv) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_broker.result_backend) as connection:
        yield connection


@pytest.fixture
def task_ids(client: redis.Redis) -> Iterator[list[str]]:
    """Fresh task ids; their result keys are deleted after the test."""
    ids = [f"results-{uuid.uuid4().hex}" for _ in range(2)]
    yield ids
    client.delete(*(f"celery-task-meta-{task_id}" for task_id in ids))


def _celery_backend(app: TasklaneApp) -> RedisBackend:
    return RedisBackend(app=app, url=app.conf.result_backend)


def _stored(client: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None, f"no result stored for {task_id}"
    meta: dict[str, Any] = json.loads(raw)
    return meta


def test_the_worker_app_stores_with_the_one_trip_backend(notifier_app: TasklaneApp) -> None:
    assert type(notifier_app.backend) is RedisResults


@pytest.mark.parametrize("state", [states.SUCCESS, states.FAILURE, states.RETRY])
def test_a_result_is_stored_as_celery_stores_it(
    notifier_app: TasklaneApp, client: redis.Redis, task_ids: list[str], state: str
) -> None:
    ours, celerys = task_ids
    result: Any = {"sent": 3} if state == states.SUCCESS else ValueError("boom")
    notifier_app.backend.store_result(ours, result, state, traceback="tb")
    _celery_backend(notifier_app).store_result(celerys, result, state, traceback="tb")

    stored, expected = _stored(client, ours), _stored(client, celerys)
    assert stored.pop("task_id") == ours
    assert expected.pop("task_id") == celerys
    # The time it was stored is the one field that may differ.
    stored.pop("date_done"), expected.pop("date_done")
    assert stored == expected
    assert stored["status"] == state
    expires = notifier_app.backend.expires
    for task_id in task_ids:
        assert 0 < client.ttl(f"celery-task-meta-{task_id}") <= expires


@pytest.mark.parametrize("later", [states.FAILURE, states.RETRY, states.STARTED])
def test_a_stored_success_is_not_overwritten(
    notifier_app: TasklaneApp, client: redis.Redis, task_ids: list[str], later: str
) -> None:
    # A message delivered twice: the second run must not replace the first one's success.
    ours, celerys = task_ids
    for backend, task_id in (
        (notifier_app.backend, ours),
        (_celery_backend(notifier_app), celerys),
    ):
        backend.store_result(task_id, {"sent": 1}, states.SUCCESS)
        backend.store_result(task_id, None, later)
        assert _stored(client, task_id)["status"] == states.SUCCESS, backend
        assert _stored(client, task_id)["result"] == {"sent": 1}


def test_a_state_before_success_is_overwritten(
    notifier_app: TasklaneApp, client: redis.Redis, task_ids: list[str]
) -> None:
    task_id = task_ids[0]
    notifier_app.backend.store_result(task_id, None, states.STARTED)
    assert _stored(client, task_id)["status"] == states.STARTED
    notifier_app.backend.store_result(task_id, {"sent": 2}, states.SUCCESS)
    assert _stored(client, task_id) | {"date_done": None} == _stored(client, task_id) | {
        "status": states.SUCCESS,
        "result": {"sent": 2},
        "date_done": None,
    }


def test_what_is_not_a_json_result_is_overwritten(
    notifier_app: TasklaneApp, client: redis.Redis, task_ids: list[str]
) -> None:
    task_id = task_ids[0]
    client.set(f"celery-task-meta-{task_id}", b"\x80not json")
    notifier_app.backend.store_result(task_id, {"sent": 4}, states.SUCCESS)
    assert _stored(client, task_id)["result"] == {"sent": 4}


def test_the_result_reaches_a_client_waiting_on_it(
    notifier_app: TasklaneApp, task_ids: list[str]
) -> None:
    # AsyncResult.get() on Redis waits on the key's channel, which the store publishes to.
    task_id = task_ids[0]
    waiting = notifier_app.AsyncResult(task_id)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(waiting.get(timeout=30)))
    waiter.start()
    eventually(
        lambda: notifier_app.backend.client.pubsub_numsub(f"celery-task-meta-{task_id}")[0][1] > 0,
        timeout=30,
        message="the waiting client subscribed",
    )
    notifier_app.backend.store_result(task_id, {"sent": 5}, states.SUCCESS)
    waiter.join(timeout=30)
    assert got == [{"sent": 5}]


def test_a_failure_is_kept_for_result_failure_expires(
    redis_broker: BrokerEnv, client: redis.Redis, task_ids: list[str]
) -> None:
    app = create_app("notifier", settings=redis_broker.settings)
    app.conf.result_failure_expires = 60
    try:
        failed, succeeded = task_ids
        app.backend.store_result(failed, ValueError("boom"), states.FAILURE)
        app.backend.store_result(succeeded, {"sent": 6}, states.SUCCESS)
        assert 0 < client.ttl(f"celery-task-meta-{failed}") <= 60
        assert client.ttl(f"celery-task-meta-{succeeded}") > 60
    finally:
        app.close()


def test_a_result_is_one_command_from_the_worker(
    notifier_app: TasklaneApp, client: redis.Redis, task_ids: list[str]
) -> None:
    """What Redis received naming the result's key: the script alone, where Celery sends a
    GET and then a SET and a PUBLISH."""
    ours, celerys = task_ids
    seen: dict[str, list[str]] = {ours: [], celerys: []}
    monitor_ready = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            monitor_ready.set()
            for event in monitor.listen():
                command = str(event["command"])
                for task_id, commands in seen.items():
                    # Commands a script runs are reported as from "lua": not a round trip.
                    if task_id in command and event.get("client_type") != "lua":
                        commands.append(command.split(" ", 1)[0].upper())
                if "monitor-stop" in command:
                    return

    # Loaded beforehand, so the store's first call finds it (otherwise: EVALSHA, NOSCRIPT, EVAL).
    client.script_load(STORE_UNLESS_SUCCEEDED)
    watcher = threading.Thread(target=watch)
    watcher.start()
    assert monitor_ready.wait(30)
    try:
        notifier_app.backend.store_result(ours, {"sent": 7}, states.SUCCESS)
        _celery_backend(notifier_app).store_result(celerys, {"sent": 7}, states.SUCCESS)
    finally:
        client.get("monitor-stop")
        watcher.join(timeout=30)
    assert seen[ours] == ["EVALSHA"], seen
    assert seen[celerys] == ["GET", "SETEX", "PUBLISH"], seen
