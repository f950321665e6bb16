"""Beat's tick costs what is due and what changed, not how many entries there are.

The scheduler ticks in this process against a ``redis-server`` of the test's own, so Redis's
``INFO commandstats`` counts Beat's commands and nobody else's. 10,000 entries, none due during
the test: an idle tick must cost the same few commands it would with one entry, and a change made
through ``Schedules`` must be live after the next tick (read back by name, not by a full reload).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tasklane.beat.client import Schedules
from tasklane.beat.index import EntryIndex
from tasklane.beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    ScheduleEntry,
)
from tasklane.beat.scheduler import TasklaneScheduler, create_beat_app
from tasklane.beat.store import ScheduleStore
from tasklane.settings import Settings
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.headers import SCHEDULE
from tests.integration.beat.test_beat import IM
from tests.support.harness import BrokerEnv, RedisServer

ENTRIES = 10_000
IDLE_TICKS = 5
#: An idle tick: renew the lock (a script: EVALSHA and its GET, PEXPIRE), read the version, the
#: feed's floor and the change feed (MULTI, GET, GET, ZRANGEBYSCORE, EXEC), report the status
#: (SET). Before the index: one HGETALL per entry and tick.
IDLE_TICK_COMMANDS = 9
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide")


def quiet(count: int, now: datetime) -> list[ScheduleEntry]:
    """Intervals, crontabs in several zones and one-offs, none due for months."""
    far_month = (now.month + 5) % 12 + 1
    entries = []
    for i in range(count):
        kind = i % 10
        schedule: IntervalSchedule | CrontabSchedule | ClockedSchedule
        start = None
        if kind < 6:
            schedule = IntervalSchedule(every=86_400 * (1 + i % 7))
            start = now + timedelta(days=60, seconds=i)
        elif kind < 9:
            schedule = CrontabSchedule(
                minute=str(i % 60),
                hour=str(i % 24),
                day_of_month=str(1 + i % 28),
                month_of_year=str(far_month),
                timezone=ZONES[i % len(ZONES)],
            )
        else:
            schedule = ClockedSchedule(at=now + timedelta(days=120, seconds=i))
        entries.append(
            ScheduleEntry(
                name=f"quiet-{i:05d}",
                task="notifier.im.send",
                payload=IM,
                schedule=schedule,
                start_at=start,
            )
        )
    return entries


def commands(client: redis.Redis, action: Callable[[], object]) -> dict[str, int]:
    """The commands Redis ran during ``action``, by name (these counting calls left out)."""
    client.config_resetstat()
    action()
    stats = client.info("commandstats")
    counted = {
        name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()
    }
    return {
        name: calls
        for name, calls in counted.items()
        if name != "info" and not name.startswith("config")
    }


@dataclass
class Loaded:
    scheduler: TasklaneScheduler
    schedules: Schedules
    client: redis.Redis
    settings: Settings


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """A Beat that holds the lock and has loaded 10,000 entries."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    settings = Settings(broker_url=server.url, result_backend=server.url, namespace="scale.")
    schedules = Schedules(settings)
    scheduler = None
    try:
        for entry in quiet(ENTRIES, datetime.now(UTC)):
            schedules.store.add(entry)  # as Schedules.add stores it, without its view and audit
        with pytest.MonkeyPatch.context() as patch:
            # Module-scoped, so before the autouse fixture that clears TASKLANE_* for each test.
            for name in [n for n in os.environ if n.startswith("TASKLANE_BEAT_")]:
                patch.delenv(name)
            scheduler = TasklaneScheduler(app=create_beat_app(settings))
        scheduler.tick()  # takes the lock and loads every entry
        assert scheduler.holds_lock and len(scheduler.entries) == ENTRIES
        yield Loaded(scheduler, schedules, redis.Redis.from_url(server.url), settings)
    finally:
        if scheduler is not None:
            scheduler.close()
        schedules.close()
        server.kill()


def test_an_idle_tick_runs_a_few_redis_commands_with_10000_entries(loaded: Loaded) -> None:
    used = commands(loaded.client, lambda: [loaded.scheduler.tick() for _ in range(IDLE_TICKS)])
    assert sum(used.values()) <= IDLE_TICKS * IDLE_TICK_COMMANDS, used
    assert "hgetall" not in used and "hmget" not in used, used  # no entry or state read


def test_a_change_is_live_after_the_next_tick_read_back_by_name(loaded: Loaded) -> None:
    scheduler, schedules = loaded.scheduler, loaded.schedules
    now = datetime.now(UTC)
    schedules.add(
        ScheduleEntry(
            name="due-now",
            task="notifier.im.send",
            payload=IM,
            schedule=IntervalSchedule(every=3600),
            start_at=now - timedelta(seconds=1),
        )
    )
    schedules.disable("quiet-00042")
    schedules.edit("quiet-00043", {"payload": {**IM, "text": "edited"}})

    used = commands(loaded.client, scheduler.tick)

    assert "due-now" in scheduler.entries
    assert not scheduler.entries["quiet-00042"].enabled
    assert scheduler.entries["quiet-00043"].payload["text"] == "edited"
    # The three changed entries and their states were read, not the 10,000 (one HGETALL
    # each on a full load); the new entry fired in that same tick.
    assert used.get("hgetall", 0) <= 3 and used.get("hmget", 0) == 1, used
    sent = [
        json.loads(raw)["headers"].get(SCHEDULE)
        for key in redis_queue_keys(f"{loaded.settings.namespace}notifier.im")
        for raw in loaded.client.lrange(key, 0, -1)
    ]
    assert sent == ["due-now"]


def test_the_change_feed_stays_bounded_and_a_beat_behind_it_reloads_everything(
    env: BrokerEnv,
) -> None:
    client = redis.Redis.from_url(env.settings.require_state())
    store = ScheduleStore(client, namespace=env.settings.namespace, change_feed_length=3)
    now = datetime.now(UTC)
    first, *later = quiet(6, now)
    store.add(first)
    index = EntryIndex(store)
    index.refresh(now, keepalive=lambda: None)
    assert list(index.entries) == [first.name]

    for entry in later[:2]:  # within the feed's length: read back by name
        store.add(entry)
    assert sorted(index.refresh(now, keepalive=lambda: None)) == [e.name for e in later[:2]]

    for entry in later[2:]:  # three more names push the two read above out of the feed
        store.add(entry)
    store.add(first.model_copy(update={"description": "edited"}), replace=True)
    assert client.zcard(store.key("changes")) == 3
    version = index.version
    changed = index.refresh(now, keepalive=lambda: None)

    # Everything read again, because what changed after `version` is no longer all in the feed.
    assert store.changed_since(version)[1] is None
    assert sorted(changed) == sorted(e.name for e in [first, *later])
    assert index.entries[first.name].description == "edited"
    assert len(index.entries) == 6
