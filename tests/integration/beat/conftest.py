"""Beat's tests share a Redis-only environment in a namespace of each test's own."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasklane.beat.client import Schedules
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup


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


@pytest.fixture
def start_beat(env: BrokerEnv, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``tasklane beat [args]`` processes (lock TTL 2 s); all stopped at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str, **extra_env: str) -> WorkerProcess:
        command = [str(Path(sys.executable).with_name("tasklane")), "beat", *args]
        process_env = {**env.env(), "TASKLANE_BEAT_LOCK_TTL": "2", **extra_env}
        beat = WorkerProcess.from_command(
            command, process_env, tmp_path / f"beat{len(started)}.log"
        )
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()
