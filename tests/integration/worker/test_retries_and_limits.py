"""Retry exhaustion and the soft time limit end in the DLQ; the worker keeps running."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Producer

from tasklane.errors import TaskFailedError
from tasklane.publish import Publisher
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, encode_body, task_headers
from tasklane.wire.routing import queue_name
from tests.support import eventually
from tests.support.flaky_contracts import ALWAYS_FAILS, FLAKY_REGISTRY, SLOW
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup, wait_for_dead_letters


def dead_letter_hook_calls(broker: BrokerEnv, timeout: float = 10.0) -> list[str]:
    """What the flaky service's dead-letter hook recorded, once it recorded anything.

    The hook runs right after the dead letter is sent, so a test that saw the letter may still
    be ahead of it.
    """
    key = f"{broker.namespace}flaky:dead"
    with redis.Redis.from_url(broker.result_backend) as client:
        return eventually(
            lambda: [item.decode() for item in client.lrange(key, 0, -1)],
            timeout=timeout,
            message=f"the dead-letter hook to record in {key}",
        )


@pytest.fixture
def flaky_worker(broker: BrokerEnv, tmp_path: Path) -> Iterator[WorkerProcess]:
    command = [
        sys.executable, "-m", "celery", "-A", "tests.support.flaky_service", "worker",
        "--concurrency", "2", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = WorkerProcess.from_command(command, broker.env(), tmp_path / "flaky.log")
    worker.wait_ready()
    yield worker
    worker.stop()
    cleanup(broker, FLAKY_REGISTRY)  # conftest's clean-up knows only the platform's contracts


def test_retries_exhausted_end_in_the_dlq_with_attempts(
    broker: BrokerEnv, flaky_worker: WorkerProcess
) -> None:
    with Publisher(broker.settings, registry=FLAKY_REGISTRY) as publisher:
        handle = publisher.publish(ALWAYS_FAILS, {"label": "payment-service"})
        with pytest.raises(TaskFailedError, match="gave up after 3 attempts"):
            handle.get(timeout=30)
    (letter,) = wait_for_dead_letters(broker, ALWAYS_FAILS.queue, 1)
    assert letter.reason == "retries-exhausted"
    assert letter.error_type == "TransientError"
    assert letter.attempts == 3  # the first try and max_retries=2 retries
    assert "payment-service: upstream unavailable" in letter.error
    assert flaky_worker.output().count("retrying in") == 2
    assert dead_letter_hook_calls(broker) == ["payment-service:RetriesExhaustedError"]


FORGED = {
    "x-tasklane-busy-waits": 40,
    "x-tasklane-reason": "forged",
    "x-tasklane-error-type": "Forged",
    "x-tasklane-error": "forged",
    "x-tasklane-attempts": 99,
    "x-tasklane-failed-at": "1999-01-01T00:00:00+00:00",
    "x-tasklane-queue": "elsewhere",
    "x-tasklane-worker": "forged@nowhere",
}


def test_headers_the_worker_owns_are_ignored_when_an_upstream_sends_them(
    broker: BrokerEnv, flaky_worker: WorkerProcess
) -> None:
    task_id = str(uuid.uuid4())
    with Connection(broker.broker_url) as connection:
        Producer(connection.default_channel).publish(
            encode_body({"label": "forger"}),
            exchange="",
            routing_key=queue_name(ALWAYS_FAILS, broker.namespace),
            headers={**task_headers(ALWAYS_FAILS.name, task_id), **FORGED},
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
        )
    (letter,) = wait_for_dead_letters(broker, ALWAYS_FAILS.queue, 1)
    # The policy's own count and backoff: three attempts, two retries, a real reason.
    assert letter.task_id == task_id
    assert letter.reason == "retries-exhausted"
    assert letter.error_type == "TransientError"
    assert letter.attempts == 3
    assert "forger: upstream unavailable" in letter.error
    assert letter.queue == queue_name(ALWAYS_FAILS, broker.namespace)
    assert letter.headers["x-tasklane-worker"].startswith("celery@")
    assert letter.failed_at > "2000"
    log = flaky_worker.output()
    assert "attempt 1 failed" in log and "attempt 2 failed" in log
    assert "attempt -" not in log


def test_soft_time_limit_ends_in_the_dlq_and_the_worker_goes_on(
    broker: BrokerEnv, flaky_worker: WorkerProcess
) -> None:
    with Publisher(broker.settings, registry=FLAKY_REGISTRY) as publisher:
        slow = publisher.publish(SLOW, {"label": "too-slow", "sleep": 2.0})
        with pytest.raises(TaskFailedError, match="SoftTimeLimitExceeded"):
            slow.get(timeout=30)
        fast = publisher.publish(SLOW, {"label": "fast"})
        assert fast.get(timeout=20).label == "fast"
    (letter,) = wait_for_dead_letters(broker, SLOW.queue, 1)
    assert letter.reason == "time-limit"
    assert letter.task_id == slow.id
    assert flaky_worker.process.poll() is None
    assert dead_letter_hook_calls(broker) == ["too-slow:SoftTimeLimitExceeded"]


def test_hard_time_limit_kills_the_pool_process_and_dead_letters(
    broker: BrokerEnv, flaky_worker: WorkerProcess
) -> None:
    with Publisher(broker.settings, registry=FLAKY_REGISTRY) as publisher:
        stuck = publisher.publish(
            SLOW, {"label": "stuck", "sleep": 30.0, "ignore_soft_limit": True}
        )
        with pytest.raises(TaskFailedError, match="TimeLimitExceeded"):
            stuck.get(timeout=30)
        after = publisher.publish(SLOW, {"label": "after"})
        assert after.get(timeout=20).label == "after"  # a fresh pool process took over
    (letter,) = wait_for_dead_letters(broker, SLOW.queue, 1)
    assert letter.reason == "time-limit"
    assert letter.error_type == "TimeLimitExceeded"
    assert letter.task_id == stuck.id
    assert letter.payload()[1]["label"] == "stuck"
    # The hook runs in the worker's main process here, since the pool process was killed.
    assert dead_letter_hook_calls(broker) == ["stuck:TimeLimitExceeded"]
