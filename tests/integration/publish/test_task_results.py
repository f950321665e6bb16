"""Reading a task's result back through :class:`tasklane.publish.TaskHandle`."""

from __future__ import annotations

import threading
import uuid

import pytest
from celery import Celery

from tasklane.contracts import SEND_EMAIL
from tasklane.publish import ResultReader, TaskHandle
from tasklane.settings import Settings
from tests.support.faults import TcpProxy


def test_a_result_stored_before_the_subscription_reaches_redis_is_still_returned(
    redis_url: str,
) -> None:
    """Redis announces a stored result only to subscriptions it already holds.

    Celery's Redis result reader subscribes on one connection and reads the stored result on
    another, and nothing orders the two at the server. Here the subscription is held back in
    a proxy until the reader's read has been answered (nothing stored yet) and the result has
    been stored and announced to no one: the handle must still return it.
    """
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}".encode()
    subscribe_held, release_subscribe, read_answered = (threading.Event() for _ in range(3))
    reading_connections: set[int] = set()

    def before_forward(connection: int, from_client: bool, data: bytes) -> None:
        if from_client and b"SUBSCRIBE" in data and key in data:
            subscribe_held.set()
            release_subscribe.wait(30)
        elif from_client and key in data:
            reading_connections.add(connection)
        elif not from_client and connection in reading_connections:
            read_answered.set()

    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    database = redis_url.rsplit("/", 1)[1]
    stored = {"message_id": "<m@tasklane>", "accepted": ["a@example.com"]}
    writer = Celery("result-writer", set_as_current=False)
    writer.conf.update(result_backend=redis_url, result_serializer="json")
    outcome: list[object] = []
    with TcpProxy(host, int(port), before_forward=before_forward) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}/{database}"
        reader = ResultReader(Settings(broker_url=redis_url, result_backend=proxied))
        handle = TaskHandle(task_id, SEND_EMAIL, reader)

        def wait_for_result() -> None:
            try:
                outcome.append(handle.get(timeout=10))
            except Exception as error:  # the test reads it below
                outcome.append(error)

        waiter = threading.Thread(target=wait_for_result)
        waiter.start()
        try:
            assert subscribe_held.wait(10), "the reader never subscribed"
            assert read_answered.wait(10), "the reader never read the stored result"
            writer.backend.store_result(task_id, stored, "SUCCESS")
        finally:
            release_subscribe.set()
            waiter.join(30)
            reader.close()
            writer.backend.forget(task_id)
    assert outcome == [SEND_EMAIL.result.model_validate(stored)]


def test_a_result_that_never_comes_times_out_naming_the_task(redis_url: str) -> None:
    reader = ResultReader(Settings(broker_url=redis_url))
    task_id = str(uuid.uuid4())
    try:
        with pytest.raises(
            TimeoutError, match=rf"^notifier\.email\.send {task_id}: no result in 1\.5s$"
        ):
            TaskHandle(task_id, SEND_EMAIL, reader).get(timeout=1.5)
    finally:
        reader.close()
