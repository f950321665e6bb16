"""A task running when the worker loses its Redis broker finishes and records its key.

Cancelling it instead (Celery's ``worker_cancel_long_running_tasks_on_connection_loss``) could
cut it right after the SMTP server had accepted the email, before the idempotency record: the
redelivery then sent it again. Letting it finish records the key, so a redelivery deduplicates.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasklane.contracts import SEND_EMAIL
from tasklane.publish import Publisher
from tasklane.wire.routing import queue_name
from tasklane_dev.sinks import SmtpSink
from tests.support import eventually
from tests.support.harness import BrokerEnv, RedisServer, WorkerProcess

EMAIL = {"to": ["ada@example.com"], "subject": "Receipt", "text": "Order 8",
         "idempotency_key": "receipt-8"}  # fmt: skip


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def test_a_running_task_survives_a_redis_restart_and_its_redelivery_deduplicates(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    env_broker = BrokerEnv("redis", own_redis.url, own_redis.url, f"t{uuid.uuid4().hex[:8]}.")
    entered, release = threading.Event(), threading.Event()

    def stall_until_released(recipients: list[str]) -> None:
        entered.set()
        release.wait(60)
        return None  # accepted

    with SmtpSink(before_data=stall_until_released) as sink:
        env = {
            **env_broker.env(),
            "TASKLANE_NOTIFIER_SMTP_PORT": str(sink.port),
            # Results in the log: the redelivery's answer is only seen in its "succeeded" line.
            "TASKLANE_LOG_TASK_DATA": "true",
        }
        worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=2)
        try:
            worker.wait_ready()
            with Publisher(env_broker.settings) as publisher:
                handle = publisher.publish(SEND_EMAIL, EMAIL)
                raw = _stored_message(own_redis, env_broker)
                assert entered.wait(30), worker.output()
                own_redis.kill()  # the worker's broker (and state store) goes away mid-delivery
                eventually(
                    lambda: "Connection to broker lost" in worker.output(),
                    timeout=30,
                    message="the worker to notice the lost broker",
                )
                own_redis.start()
                release.set()  # the SMTP server accepts now, after the connection loss
                result = handle.get(timeout=60)
                assert result.accepted == ["ada@example.com"]
                assert "Terminating it instead" not in worker.output()
                assert "breaking change" not in worker.output()  # kept on purpose, said once

                # The broker delivers the message again (here: pushed as Redis would restore it
                # after the visibility timeout), and the worker, still running, answers it from
                # the idempotency record. It was acknowledged once nothing of it is left in Redis.
                queue = queue_name(SEND_EMAIL, env_broker.namespace)
                with redis.Redis.from_url(own_redis.url) as client:
                    client.lpush(queue, raw)
                    eventually(
                        lambda: client.llen(queue) == 0 and not _held(client),
                        timeout=30,
                        message="the redelivery to be taken and acknowledged",
                    )
                assert "deduplicated': True" in worker.output()
                assert worker.process.poll() is None
        finally:
            release.set()
            worker.stop()
    assert len(sink.messages) == 1  # the email went out once


def _held(client: redis.Redis) -> bytes | None:
    """The email's envelope while a worker holds it unacknowledged (Kombu's ``unacked`` hash)."""
    for value in client.hvals("unacked"):
        envelope, _, _ = json.loads(value)
        if envelope["headers"]["task"] == SEND_EMAIL.name:
            return json.dumps(envelope).encode()
    return None


def _stored_message(server: RedisServer, env: BrokerEnv) -> bytes:
    """The published envelope, read from the worker's unacknowledged set once it took it."""
    with redis.Redis.from_url(server.url) as client:
        return eventually(lambda: _held(client), timeout=30, message="the worker to hold it")
