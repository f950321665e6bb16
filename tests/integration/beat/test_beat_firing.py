"""What Beat publishes for an entry, and what it counts and records: real ``tasklane beat``.

Beat publishes to a Redis broker and no worker consumes, so each test reads the messages Beat
sent straight from the queue's Redis lists.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tasklane.beat.client import Schedules
from tasklane.publish import Publisher
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.headers import PUBLISHED_AT, SCHEDULE, SLOT
from tasklane_dev.sinks import free_port
from tests.integration.beat.test_beat import IM, STARTUP, every, slots, ticked_since
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess

StartBeat = Callable[[], tuple[WorkerProcess, int]]


@pytest.fixture
def start_beat(env: BrokerEnv, tmp_path: Path) -> Iterator[StartBeat]:
    """Start ``tasklane beat`` with its metrics on a port of its own; stopped afterwards."""
    started: list[WorkerProcess] = []

    def start() -> tuple[WorkerProcess, int]:
        port = free_port()
        command = [str(Path(sys.executable).with_name("tasklane")), "beat"]
        process_env = {
            **env.env(),
            "TASKLANE_BEAT_LOCK_TTL": "2",
            "TASKLANE_METRICS_PORT": str(port),
        }
        beat = WorkerProcess.from_command(
            command, process_env, tmp_path / f"beat{len(started)}.log"
        )
        started.append(beat)
        return beat, port

    yield start
    for beat in started:
        beat.stop()


def messages(env: BrokerEnv, queue: str = "notifier.im") -> list[dict[str, Any]]:
    """Every message in ``queue`` (its priority lists included), as Kombu stored it."""
    client = redis.Redis.from_url(env.broker_url)
    found = []
    for key in redis_queue_keys(f"{env.namespace}{queue}"):
        found += [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    return found


def of(env: BrokerEnv, name: str) -> list[dict[str, Any]]:
    return [m for m in messages(env) if m["headers"].get(SCHEDULE) == name]


def counter(port: int, name: str, schedule: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("schedule") == schedule:
                return float(sample.value)
    raise AssertionError(f"no {name}{{schedule={schedule!r}}} in /metrics")


def test_firings_carry_the_entry_priority_and_expiry_and_each_is_recorded(
    env: BrokerEnv, schedules: Schedules, start_beat: StartBeat
) -> None:
    schedules.add(every(1, "urgent", priority=9, expires_after=30))
    schedules.add(every(1, "plain"))
    start_beat()
    eventually(
        lambda: of(env, "urgent") and of(env, "plain"),
        timeout=STARTUP,
        message="both entries firing",
    )
    schedules.disable("urgent")
    schedules.disable("plain")
    disabled_at = datetime.now(UTC)
    # A tick begun before the disable may still fire; one begun after it fires neither.
    eventually(lambda: ticked_since(schedules, disabled_at), timeout=10, message="a tick after")
    # What the publisher makes of priority 9 and of the contract's own, on this broker.
    with Publisher(env.settings) as publisher:
        publisher.publish("notifier.im.send", IM, priority=9, headers={SCHEDULE: "ref-9"})
        publisher.publish("notifier.im.send", IM, headers={SCHEDULE: "ref-default"})
    (nine,) = of(env, "ref-9")
    (default,) = of(env, "ref-default")
    assert nine["properties"]["priority"] != default["properties"]["priority"]

    urgent, plain = of(env, "urgent"), of(env, "plain")
    for message in urgent:
        assert message["properties"]["priority"] == nine["properties"]["priority"]
        expires = datetime.fromisoformat(message["headers"]["expires"])
        published = datetime.fromtimestamp(float(message["headers"][PUBLISHED_AT]), UTC)
        assert abs((expires - published) - timedelta(seconds=30)) < timedelta(seconds=1)
    for message in plain:
        assert message["properties"]["priority"] == default["properties"]["priority"]
        assert message["headers"]["expires"] is None

    # Each firing is in the entry's run history: its task id and its slot.
    for name, sent in (("urgent", urgent), ("plain", plain)):
        recorded = {f.task_id: f.slot for f in schedules.store.firings(name, limit=50)}
        published_slots = {
            m["headers"]["id"]: datetime.fromisoformat(m["headers"][SLOT]) for m in sent
        }
        assert recorded == published_slots
        assert all(not f.manual for f in schedules.store.firings(name, limit=50))


def test_missed_slots_count_only_while_no_beat_ran_not_while_disabled(
    env: BrokerEnv, schedules: Schedules, start_beat: StartBeat
) -> None:
    beat, port = start_beat()
    schedules.add(every(1, "tick"))
    eventually(lambda: len(slots(env, "tick")) >= 2, timeout=STARTUP, message="two firings")
    schedules.disable("tick")
    disabled_at = datetime.now(UTC)
    # Three slots' time go by disabled, with Beat ticking through them.
    eventually(
        lambda: ticked_since(schedules, disabled_at + timedelta(seconds=3)),
        timeout=15,
        message="three slots' time disabled",
    )
    schedules.enable("tick")
    enabled_at = datetime.now(UTC)
    eventually(
        lambda: any(slot > enabled_at for slot in slots(env, "tick")),
        timeout=10,
        message="a firing after enabling",
    )
    # A tick begun before the disable may still fire once; none is made up after enabling.
    fired = slots(env, "tick")
    assert [s for s in fired if disabled_at + timedelta(seconds=1) < s <= enabled_at] == []
    assert counter(port, "tasklane_beat_missed_total", "tick") == 0
    assert counter(port, "tasklane_beat_fired_total", "tick") == len(fired)

    # With no Beat running, slots are missed, and the next Beat counts them.
    os.killpg(beat.process.pid, signal.SIGTERM)
    beat.process.wait(20)
    stopped_at = datetime.now(UTC)
    last = max(slots(env, "tick"))
    eventually(
        lambda: datetime.now(UTC) > stopped_at + timedelta(seconds=3),
        timeout=10,
        message="three slots' time with no Beat",
    )
    _, port = start_beat()
    eventually(
        lambda: any(slot > stopped_at for slot in slots(env, "tick")),
        timeout=STARTUP,
        message="the next Beat firing",
    )
    first = min(slot for slot in slots(env, "tick") if slot > last)
    owed = round((first - last).total_seconds()) - 1
    assert owed >= 2
    assert counter(port, "tasklane_beat_missed_total", "tick") == owed
