"""Beat with its schedule store behind Redis Sentinel: the master dies with a claim that only it
had, and a promoted replica that never saw the claim takes over.

Redis replicates asynchronously. The test holds the replication window open on purpose (the
replica's link to the master is cut), so the master that fires the slot is the only one to know.
Beat publishes to the shared RabbitMQ, which the failover does not touch, so the queue counts
every firing that was sent.
- Without ``TASKLANE_REDIS_WAIT_REPLICAS``, the promoted master never saw the claim, and the slot
  fires a second time. That is the documented window.
- With it set to 1, Beat publishes a slot only once a replica holds its claim, so the slot fires
  once.
Design: docs/beat.md#beat-across-a-redis-failover.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import NotFound
from kombu import Connection

from tasklane.beat.client import Schedules
from tasklane.beat.models import IntervalSchedule, ScheduleEntry
from tasklane.beat.store import ScheduleStore
from tasklane.settings import Settings
from tasklane.wire.headers import SCHEDULE, SLOT
from tests.support import eventually
from tests.support.harness import RABBITMQ_URL, BrokerEnv, WorkerProcess, cleanup
from tests.support.sentinel import Address, SentinelGroup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

NAME = "hourly"
#: Seconds from adding the entry to its one slot: the replica is stopped before it comes.
LEAD = 20.0
STARTUP = 90.0
IM = {"channel": "webhook", "url": "https://hooks.example.org/beat", "text": "tick"}


class Firings:
    """Every message Beat sent to the queue, taken off it as it comes (the queue keeps none)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.headers: list[dict[str, Any]] = []

    def slots(self) -> list[datetime]:
        with Connection(RABBITMQ_URL) as connection:
            channel = connection.default_channel
            try:
                while (message := channel.basic_get(self.queue, no_ack=True)) is not None:
                    self.headers.append(dict(message.headers))
            except NotFound:
                pass  # the publisher declares the queue with its first message: none yet
        return [datetime.fromisoformat(h[SLOT]) for h in self.headers if h.get(SCHEDULE) == NAME]


@pytest.fixture
def broker() -> Iterator[BrokerEnv]:
    env = BrokerEnv("rabbitmq", RABBITMQ_URL, RABBITMQ_URL, f"t{uuid.uuid4().hex[:10]}.")
    yield env
    cleanup(env)


def active(schedules: Schedules) -> list[str]:
    return [status.process for status in schedules.beats() if status.holds_lock]


def claimed_on(group: SentinelGroup, server: Address, namespace: str) -> datetime | None:
    """The last slot the entry's state holds on one server, read there directly."""
    with group.server_client(server) as client:
        return ScheduleStore(client, namespace=namespace).state(NAME).last_slot


@pytest.mark.parametrize("replicas", [0, 1], ids=["no-wait", "wait-1-replica"])
def test_a_claim_only_the_dead_master_had_fires_twice_unless_claims_wait_for_a_replica(
    tmp_path: Path, broker: BrokerEnv, replicas: int
) -> None:
    # The replica is cut off for the lead and the claim (seconds): Sentinel promotes a replica
    # whose link has been down for up to ten times down-after.
    with SentinelGroup(tmp_path / "redis", master_name="tasklane", down_after_ms=5000) as group:
        state_url = group.broker_url(0)
        settings = Settings(
            broker_url=RABBITMQ_URL,
            state_url=state_url,
            namespace=broker.namespace,
            redis_sentinel_master="tasklane",
        )
        env = {
            "TASKLANE_BROKER_URL": RABBITMQ_URL,
            "TASKLANE_STATE_URL": state_url,
            "TASKLANE_NAMESPACE": broker.namespace,
            "TASKLANE_REDIS_SENTINEL_MASTER": "tasklane",
            "TASKLANE_REDIS_WAIT_REPLICAS": str(replicas),
            "TASKLANE_BEAT_LOCK_TTL": "2",
        }
        command = [str(Path(sys.executable).with_name("tasklane")), "beat"]
        beats = [
            WorkerProcess.from_command(command, env, tmp_path / f"beat{n}.log") for n in range(2)
        ]
        firings = Firings(f"{broker.namespace}notifier.im")
        try:
            with Schedules(settings) as schedules:
                eventually(
                    lambda: len(schedules.beats()) == 2 and len(active(schedules)) == 1,
                    timeout=STARTUP,
                    message=lambda: (
                        "one active beat of two\n" + "\n".join(b.output()[-2000:] for b in beats)
                    ),
                )
                slot = (datetime.now(UTC) + timedelta(seconds=LEAD)).replace(microsecond=0)
                schedules.add(
                    ScheduleEntry(
                        name=NAME,
                        task="notifier.im.send",
                        payload={
                            "channel": "webhook",
                            "url": "https://hooks.example.org/b",
                            "text": "t",
                        },
                        schedule=IntervalSchedule(every=3600),
                        start_at=slot,
                    )
                )
                master = group.master()
                (replica,) = [a for a in group.server_addresses if a != master]
                # The entry reaches the replica; from here on nothing more does.
                eventually(
                    lambda: _has_entry(group, replica, broker.namespace),
                    timeout=30,
                    message="the entry on the replica",
                )
                group.cut_off(replica)
                assert datetime.now(UTC) < slot, "the slot came before the replica stopped"

                eventually(
                    lambda: claimed_on(group, master, broker.namespace) == slot,
                    timeout=LEAD + 60,
                    message="the slot claimed on the master",
                )
                if replicas:
                    # The claim waits for the replica, which takes nothing: nothing is sent.
                    eventually(
                        lambda: any("until the replicas have them" in b.output() for b in beats),
                        timeout=30,
                        message="beat to hold the slot back for the replicas",
                    )
                    assert firings.slots() == []
                else:
                    eventually(lambda: firings.slots() == [slot], timeout=30, message="fired")

                assert claimed_on(group, replica, broker.namespace) is None  # master only
                group.kill_master()
                group.reconnect(replica)
                promoted = group.wait_for_failover(master)
                assert promoted == replica
                # Back as the new master's replica: a claim that waits for one can be made now.
                group.restart(master[1])
                group.wait_for_replica(master, promoted)

                expected = 1 if replicas else 2
                eventually(
                    lambda: len(firings.slots()) >= expected,
                    timeout=90,
                    message=lambda: (
                        f"{expected} firings, not {firings.slots()}\n"
                        + "\n".join(b.output()[-3000:] for b in beats)
                    ),
                )
                # A tick that began after the last firing arrived: nothing more is on its way.
                arrived = datetime.now(UTC)
                eventually(
                    lambda: any(s.holds_lock and s.last_tick > arrived for s in schedules.beats()),
                    timeout=30,
                    message="a tick after the firings arrived",
                )
                assert firings.slots() == [slot] * expected
                assert len(active(schedules)) == 1
                assert schedules.show(NAME).state.last_slot == slot
        finally:
            for beat in beats:
                beat.stop()


def _has_entry(group: SentinelGroup, server: Address, namespace: str) -> bool:
    with group.server_client(server) as client:
        return NAME in {
            entry.name for entry in ScheduleStore(client, namespace=namespace).entries()
        }
