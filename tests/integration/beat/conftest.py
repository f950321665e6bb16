"""Beat's tests share a Redis-only environment in a namespace of each test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tasklane.beat.client import Schedules
from tests.support.harness import BrokerEnv, cleanup


@pytest.fixture
def env(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis as broker, result backend and schedule store, in a namespace of this test's own."""
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield broker
    cleanup(broker)


@pytest.fixture
def schedules(env: BrokerEnv) -> Iterator[Schedules]:
    with Schedules(env.settings) as managed:
        yield managed
