"""Real brokers, real worker processes and real SMTP/HTTP sinks for integration tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasklane.worker.app import TasklaneApp, create_app
from tasklane_dev.sinks import SmtpSink, WebhookSink
from tests.support.harness import (
    RABBITMQ_URL,
    BrokerEnv,
    WorkerProcess,
    cleanup,
    rabbitmq_reachable,
)


def _broker_env(kind: str, redis_url: str) -> BrokerEnv:
    namespace = f"t{uuid.uuid4().hex[:10]}."
    if kind == "redis":
        return BrokerEnv("redis", redis_url, redis_url, namespace)
    if not rabbitmq_reachable():
        if os.environ.get("TASKLANE_REQUIRE_RABBITMQ"):
            pytest.fail(f"RabbitMQ is required but does not answer at {RABBITMQ_URL}")
        pytest.skip(f"RabbitMQ does not answer at {RABBITMQ_URL}")
    return BrokerEnv("rabbitmq", RABBITMQ_URL, redis_url, namespace)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> Iterator[BrokerEnv]:
    """Each test runs once on Redis and once on RabbitMQ, in a namespace of its own."""
    env = _broker_env(request.param, redis_url)
    yield env
    cleanup(env)


@pytest.fixture
def redis_broker(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis alone, for what the publisher writes to its lists itself."""
    env = _broker_env("redis", redis_url)
    yield env
    cleanup(env)


@pytest.fixture
def notifier_app(redis_broker: BrokerEnv) -> Iterator[TasklaneApp]:
    """A notifier worker app on Redis, in a namespace of its own, whose keys (results, dead
    letters) go after; made in this process, for what a worker process does with it."""
    made = create_app("notifier", settings=redis_broker.settings)
    yield made
    made.close()


@pytest.fixture
def rabbitmq_broker(redis_url: str) -> Iterator[BrokerEnv]:
    """RabbitMQ alone, for its own features (native dead-lettering)."""
    env = _broker_env("rabbitmq", redis_url)
    yield env
    cleanup(env)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    with WebhookSink() as sink:
        yield sink


@pytest.fixture
def start_worker(
    broker: BrokerEnv, smtp_sink: SmtpSink, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start notifier workers wired to this test's broker and SMTP sink."""
    started: list[WorkerProcess] = []

    def start(concurrency: int = 2, **extra_env: str) -> WorkerProcess:
        env = {
            **broker.env(),
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp_sink.port),
            "TASKLANE_NOTIFIER_WEBHOOK_TIMEOUT": "2",
            # The webhook sink listens on loopback, which the SSRF guard refuses by default.
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
            **extra_env,
        }
        worker = WorkerProcess("notifier", env, tmp_path / f"worker{len(started)}.log", concurrency)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
