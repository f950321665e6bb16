"""Real ``tasklane gateway`` processes over real Redis (and RabbitMQ), each in its namespace."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import GatewayProcess, publisher_entry, write_tokens
from tests.support.harness import BrokerEnv, cleanup

#: May publish (and read) every notifier task.
NOTIFIER_TOKEN = secrets.token_urlsafe(32)
#: May publish instant messages only.
IM_TOKEN = secrets.token_urlsafe(32)
#: A client of schemathesis: every contract.
ALL_TOKEN = secrets.token_urlsafe(32)

StartGateway = Callable[..., GatewayProcess]


def default_publishers() -> list[dict[str, Any]]:
    return [
        publisher_entry("shop", NOTIFIER_TOKEN, ["notifier.*"]),
        publisher_entry("chat", IM_TOKEN, ["notifier.im.*"]),
        publisher_entry("everyone", ALL_TOKEN, ["*"], rate=100_000, burst=100_000),
    ]


@contextmanager
def gateways(broker: BrokerEnv, directory: Path) -> Iterator[StartGateway]:
    """Start gateways on ``broker`` (tokens files in ``directory``); all stopped at the end."""
    started: list[GatewayProcess] = []

    def start(
        publishers: list[dict[str, Any]] | None = None, wait: bool = True, **extra_env: str
    ) -> GatewayProcess:
        tokens = write_tokens(
            directory / f"tokens{len(started)}.json", publishers or default_publishers()
        )
        env = {
            **broker.env(),
            "TASKLANE_GATEWAY_TOKENS_FILE": str(tokens),
            "TASKLANE_PUBLISH_TIMEOUT": "3",
            **extra_env,
        }
        gateway = GatewayProcess(env, directory / f"gateway{len(started)}.log")
        started.append(gateway)
        return gateway.wait_ready() if wait else gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture
def start_gateway(broker: BrokerEnv, tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways on this test's broker (both kinds, by the ``broker`` parameter)."""
    with gateways(broker, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def redis_env(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis as broker and state, one namespace for the module's shared gateway."""
    env = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield env
    cleanup(env)


@pytest.fixture(scope="module")
def gateway(
    redis_env: BrokerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway on Redis shared by a module's tests (each test uses queues of its own)."""
    with (
        gateways(redis_env, tmp_path_factory.mktemp("gateway")) as start,
        pytest.MonkeyPatch.context() as patch,
    ):
        # The module fixture starts before the per-test environment clean-up.
        for name in ("TASKLANE_BROKER_URL", "TASKLANE_RESULT_BACKEND", "TASKLANE_NAMESPACE"):
            patch.delenv(name, raising=False)
        yield start()


@pytest.fixture
def redis_broker(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis alone, for what does not depend on the broker kind."""
    env = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield env
    cleanup(env)


@pytest.fixture
def start_redis_gateway(redis_broker: BrokerEnv, tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateways on Redis, in this test's namespace."""
    with gateways(redis_broker, tmp_path) as start:
        yield start
