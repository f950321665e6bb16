"""A long-lived Publisher through broker outages: it resumes, retries, then raises one error type.

Each test brings its own outage: a ``redis-server`` of its own that it kills and starts again, or
a TCP proxy in front of RabbitMQ that it cuts. The shared servers are never stopped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
from kombu.connection import Connection
from prometheus_client import REGISTRY as METRICS

from tasklane import BrokerUnavailableError, Publisher
from tasklane.contracts.notifier import SEND_EMAIL
from tasklane.settings import Settings
from tasklane.wire.queues import depths
from tasklane.wire.routing import queue_name
from tests.support import eventually
from tests.support.faults import TcpProxy
from tests.support.harness import RABBITMQ_URL, BrokerEnv, RedisServer, cleanup

EMAIL = {"to": ["someone@example.com"], "subject": "outage", "text": "still here"}


class Outage(Protocol):
    """A broker the test can take away and bring back."""

    url: str

    def stop(self) -> None: ...
    def start(self) -> None: ...
    def answers(self) -> bool: ...


class RedisOutage:
    def __init__(self, directory: Path) -> None:
        self.server = RedisServer(directory).start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()

    def answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):  # a slow connect is no answer yet
            return False


class RabbitOutage:
    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.url = f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
        self.up = True

    def stop(self) -> None:
        self.proxy.cut()
        self.up = False

    def start(self) -> None:
        self.proxy.restore()
        self.up = True

    def answers(self) -> bool:
        return self.up


@pytest.fixture(params=["redis", "rabbitmq"])
def outage(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> Iterator[tuple[Outage, BrokerEnv]]:
    namespace = f"t{uuid.uuid4().hex[:10]}."
    if request.param == "redis":
        broker = RedisOutage(tmp_path)
        try:
            yield broker, BrokerEnv("redis", broker.url, broker.url, namespace)
        finally:
            broker.stop()
        return
    with TcpProxy("127.0.0.1", 5672) as proxy:
        broker_env = BrokerEnv("rabbitmq", RABBITMQ_URL, redis_url, namespace)
        try:
            yield RabbitOutage(proxy), broker_env
        finally:
            cleanup(broker_env)  # straight to RabbitMQ, not through the proxy


def _settings(outage: Outage, env: BrokerEnv, publish_timeout: float) -> Settings:
    return Settings(
        broker_url=outage.url,
        result_backend=env.result_backend,
        namespace=env.namespace,
        publish_timeout=publish_timeout,
    )


def _queued(env: BrokerEnv, outage: Outage) -> int:
    url = outage.url if env.kind == "redis" else RABBITMQ_URL  # count behind the proxy
    with Connection(url) as connection:
        return depths(connection, [queue_name(SEND_EMAIL, env.namespace)])[0]


def _kept(env: BrokerEnv) -> int:
    """Messages published before the outage that are still queued after it: the test's own
    redis-server keeps nothing across a restart, RabbitMQ was never stopped."""
    return 0 if env.kind == "redis" else 1


def _retries(env: BrokerEnv) -> float:
    labels = {"task": SEND_EMAIL.name, "queue": queue_name(SEND_EMAIL, env.namespace)}
    return METRICS.get_sample_value("tasklane_publish_retries_total", labels) or 0.0


def test_the_same_publisher_publishes_again_once_the_broker_is_back(
    outage: tuple[Outage, BrokerEnv],
) -> None:
    broker, env = outage
    # The deadline also bounds the connect and the AMQP handshake through the proxy: 0.5 s was
    # too short on two busy cores, and the publish before the outage gave up.
    with Publisher(_settings(broker, env, publish_timeout=3)) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL)
        broker.stop()
        with pytest.raises(BrokerUnavailableError) as refused:
            publisher.publish(SEND_EMAIL, EMAIL)
        assert refused.value.attempts >= 2
        assert refused.value.sent == 0
        assert "guest:guest" not in str(refused.value)  # the password never reaches a log

        broker.start()
        eventually(broker.answers, timeout=10, message="the broker to answer again")
        retries_before = _retries(env)
        handle = publisher.publish(SEND_EMAIL, EMAIL)
        # The first attempt after the broker's return succeeds: no retry was needed.
        assert _retries(env) == retries_before
    assert handle.id
    assert _queued(env, broker) == _kept(env) + 1


def test_a_publish_during_an_outage_waits_for_the_broker_and_sends_once(
    outage: tuple[Outage, BrokerEnv],
) -> None:
    broker, env = outage
    with Publisher(_settings(broker, env, publish_timeout=120)) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL)  # connected before the outage
        broker.stop()
        with ThreadPoolExecutor(1) as pool:
            waiting: Future[Any] = pool.submit(publisher.publish, SEND_EMAIL, EMAIL)
            eventually(
                lambda: _retries(env) >= 2,
                timeout=30,
                message="the publish to retry through the outage",
            )
            assert not waiting.done()
            broker.start()
            eventually(broker.answers, timeout=10, message="the broker to answer again")
            retries_at_return = _retries(env)
            waiting.result(timeout=60)
        # The pause between attempts is at most 0.25 s: at most the attempt that was under way
        # when the broker came back fails, and the next one sends.
        assert _retries(env) - retries_at_return <= 1
    assert _queued(env, broker) == _kept(env) + 1


def test_publish_many_through_an_outage_sends_every_message(
    outage: tuple[Outage, BrokerEnv],
) -> None:
    broker, env = outage
    with Publisher(_settings(broker, env, publish_timeout=120)) as publisher:
        publisher.publish(SEND_EMAIL, EMAIL)
        broker.stop()
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(publisher.publish_many, SEND_EMAIL, [EMAIL] * 50, batch_size=20)
            eventually(lambda: _retries(env) >= 1, timeout=30, message="publish_many to retry")
            broker.start()
            handles = waiting.result(timeout=60)
    assert len({handle.id for handle in handles}) == 50
    assert _queued(env, broker) == _kept(env) + 50


def test_a_new_publisher_gives_up_at_its_deadline_with_the_documented_error(
    outage: tuple[Outage, BrokerEnv],
) -> None:
    broker, env = outage
    broker.stop()
    with Publisher(_settings(broker, env, publish_timeout=1.5)) as publisher:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as single:
            publisher.publish(SEND_EMAIL, EMAIL)
        assert time.monotonic() - started >= 1.5  # it kept trying until its deadline
        with pytest.raises(BrokerUnavailableError) as many:
            publisher.publish_many(SEND_EMAIL, [EMAIL] * 3)
    for error in (single.value, many.value):
        assert isinstance(error, ConnectionError)  # callers may catch the builtin family
        assert error.timeout == 1.5
        assert error.sent == 0
        assert "1.5s" in str(error)
