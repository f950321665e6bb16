"""``tasklane exporter`` and ``tasklane flower`` on a broker behind Redis Sentinel.

Both read queue depths from the master the Sentinels name. Each test publishes a backlog that a
replica holds too (``WAIT 1``), reads it through the running process, kills the master, and reads
it again, with messages only the promoted master holds, from the same process: neither needs a
restart to follow a failover.

The exporter opens a Kombu connection for each read, and Kombu's Sentinel channel asks every
Sentinel of the URL for the master. Flower's queue reader asks only the first Sentinel of the URL
(its Sentinel client takes one address), so its queue lengths need that Sentinel up; the Sentinels
stay up here.
"""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flower.utils.broker import Broker as FlowerBroker  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from tasklane.contracts import REGISTRY, SEND_EMAIL
from tasklane.observability.flower import create_flower_app
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.queues import queue_names
from tasklane.wire.routing import queue_name
from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import WorkerProcess
from tests.support.sentinel import Address, SentinelGroup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
MASTER = "tasklane"
#: The Redis servers' password (in the URL) and the Sentinels' own (TASKLANE_REDIS_SENTINEL_*).
REDIS_PASSWORD = "redis-pass-0123"
SENTINEL_PASSWORD = "sentinel-pass-0123"
FLOWER_AUTH = ("ops", "flower-pass-0123")
EMAIL = {"to": ["ada@example.com"], "subject": "backlog", "text": "waiting"}
#: Published before the kill, every priority sub-list used; and after it, on the new master.
BEFORE = 30
AFTER = 7
#: Seconds a process may take to start and first read the broker on busy CI cores.
START_TIMEOUT = 60.0
#: Long enough for a failover (Sentinel notices in 3 s, then votes) on busy CI cores.
FOLLOW_TIMEOUT = 90.0


class Broker:
    """A Sentinel group and the settings and environment of Tasklane processes that use it."""

    def __init__(self, group: SentinelGroup) -> None:
        self.group = group
        self.namespace = f"t{uuid.uuid4().hex[:10]}."
        self.url = group.broker_url(0)
        self.email_queue = queue_name(SEND_EMAIL, self.namespace)
        #: ``time.monotonic()`` when the master was killed, and when a quorum named another.
        self.killed_at = self.failed_over_at = 0.0

    def settings(self, *, wait_replicas: int) -> Settings:
        return Settings(
            broker_url=self.url,
            namespace=self.namespace,
            redis_sentinel_master=MASTER,
            redis_sentinel_password=SENTINEL_PASSWORD,
            redis_wait_replicas=wait_replicas,
            # Rides out a Sentinel a moment behind the failover.
            publish_timeout=FOLLOW_TIMEOUT,
        )

    def env(self) -> dict[str, str]:
        return {
            "TASKLANE_BROKER_URL": self.url,
            "TASKLANE_NAMESPACE": self.namespace,
            "TASKLANE_REDIS_SENTINEL_MASTER": MASTER,
            "TASKLANE_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }

    def publish(self, count: int, *, wait_replicas: int) -> None:
        """``count`` emails to the email queue, spread over its priority sub-lists."""
        with Publisher(self.settings(wait_replicas=wait_replicas)) as publisher:
            for n in range(count):
                publisher.publish(SEND_EMAIL, EMAIL, priority=n % 10)

    def depth_on(self, address: Address) -> int:
        """Messages of the email queue on one server, read directly (no Sentinel)."""
        with self.group.server_client(address) as client:
            return sum(int(client.llen(key)) for key in redis_queue_keys(self.email_queue))

    def fail_over(self) -> Address:
        """Kill the master once the replica holds the backlog, then publish :data:`AFTER` more,
        which only the promoted master holds; its address."""
        old = self.group.master()
        (replica,) = [a for a in self.group.server_addresses if a != old]
        # WAIT 1 returned, so this holds already; said here so a failure names the cause.
        assert self.depth_on(replica) == BEFORE
        self.killed_at = time.monotonic()
        self.group.kill_master()
        new = self.group.wait_for_failover(old)
        self.failed_over_at = time.monotonic()
        assert new == replica
        # Only the promoted master holds these: a depth of BEFORE + AFTER is read there.
        self.publish(AFTER, wait_replicas=0)
        assert self.depth_on(new) == BEFORE + AFTER
        return new

    def report(self, process: str) -> None:
        """When ``process`` first read the new master's backlog, for the log (``-s``)."""
        now = time.monotonic()
        print(
            f"\n{process} over Sentinel: the new master's backlog read "
            f"{now - self.killed_at:.1f} s after the kill ({now - self.failed_over_at:.1f} s "
            f"after a quorum named the new master, {self.failed_over_at - self.killed_at:.1f} s "
            "after the kill)"
        )

    def expected_depths(self, email: int) -> dict[str, float]:
        """Every work queue and DLQ of the namespace at 0, but the email queue at ``email``."""
        depths = {name: 0.0 for name, _ in queue_names(REGISTRY, self.namespace)}
        return depths | {self.email_queue: float(email)}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with SentinelGroup(
        tmp_path / "redis",
        master_name=MASTER,
        password=REDIS_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    ) as group:
        yield Broker(group)


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess]]:
    """Processes the test starts; each stopped (its process group) when the test ends."""
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


def running(process: WorkerProcess) -> None:
    if process.process.poll() is not None:
        raise AssertionError(f"{process.log.name} exited:\n{process.output()}")


# -- tasklane exporter -----------------------------------------------------------------------


def scrape(port: int) -> dict[str, dict[str, float]]:
    """``/metrics`` as ``{metric: {queue (or ""): value}}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[sample.labels.get("queue", "")] = sample.value
    return found


def test_exporter_reports_the_backlog_of_the_master_sentinel_names_through_a_failover(
    broker: Broker, tmp_path: Path, processes: list[WorkerProcess]
) -> None:
    broker.publish(BEFORE, wait_replicas=1)
    port = free_port()
    command = [TASKLANE, "exporter", "--port", str(port), "--address", "127.0.0.1",
               "--interval", "1"]  # fmt: skip
    exporter = WorkerProcess.from_command(command, broker.env(), tmp_path / "exporter.log")
    processes.append(exporter)

    def depths(email: int) -> dict[str, dict[str, float]] | None:
        running(exporter)
        found = scrape(port)
        up = found.get("tasklane_exporter_up", {}).get("") == 1
        wanted = found.get("tasklane_queue_messages") == broker.expected_depths(email)
        return found if up and wanted else None

    found = eventually(
        lambda: depths(BEFORE),
        timeout=START_TIMEOUT,
        interval=0.2,
        message=lambda: f"{BEFORE} messages on /metrics\n{exporter.output()[-3000:]}",
        ignoring=(OSError,),
    )
    # Read from the master, with what the exporter reads there besides the depth.
    assert found["tasklane_queue_unacked_messages"][broker.email_queue] == 0
    assert found["tasklane_queue_oldest_message_age_seconds"][broker.email_queue] >= 0

    new = broker.fail_over()

    eventually(
        lambda: depths(BEFORE + AFTER),
        timeout=FOLLOW_TIMEOUT,
        interval=0.5,
        message=lambda: (
            f"{BEFORE + AFTER} messages on /metrics from the new master {new}; last scrape "
            f"{scrape(port)}\n{exporter.output()[-3000:]}"
        ),
        ignoring=(OSError,),
    )
    broker.report("tasklane exporter")
    running(exporter)  # the same process: it followed the failover without a restart


# -- tasklane flower -------------------------------------------------------------------------


class Flower:
    """A ``tasklane flower`` process on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **env,
            "TASKLANE_FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
            "TASKLANE_FLOWER_PORT": str(self.port),
            "TASKLANE_FLOWER_ADDRESS": "127.0.0.1",
        }
        self.process = WorkerProcess.from_command([TASKLANE, "flower"], env, log)

    def wait_ready(self) -> None:
        def answers() -> bool:
            running(self.process)
            return self.get("/healthcheck", auth=None).text == "OK"

        eventually(
            answers,
            timeout=START_TIMEOUT,
            interval=0.2,
            message=lambda: f"Flower on port {self.port}\n{self.process.output()[-3000:]}",
            ignoring=(httpx.TransportError,),
        )

    def get(self, path: str, auth: tuple[str, str] | None = FLOWER_AUTH) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=auth, timeout=10)

    def queue_lengths(self) -> dict[str, int] | str:
        """Flower's queue lengths (``/api/queues/length``, what its broker tab shows), or its
        error reply: a read racing a failover fails, and the next one asks the Sentinels again.
        """
        response = self.get("/api/queues/length")
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:500]}"
        body: dict[str, Any] = response.json()
        return {queue["name"]: queue["messages"] for queue in body["active_queues"]}


@pytest.mark.parametrize(
    ("url", "reader"),
    [
        ("sentinel://:pw@127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0", "RedisSentinel"),
        ("redis://:pw@127.0.0.1:6379/0", "Redis"),
        ("amqp://guest:guest@127.0.0.1:5672//", "RabbitMQ"),
    ],
    ids=["sentinel", "redis", "rabbitmq"],
)
def test_flower_picks_its_queue_reader_by_the_broker_url_scheme(url: str, reader: str) -> None:
    # Flower reads the URL of the app's connection: Tasklane's Redis transports, named by import
    # path, must not leave their path where the scheme goes (Flower answered 404 to that).
    app = create_flower_app(Settings(broker_url=url, namespace="x.", redis_sentinel_master=MASTER))
    with app.connection() as connection:
        uri = connection.as_uri(include_password=True)
        assert connection.as_uri() == uri.replace(":pw@", ":**@").replace(":guest@", ":**@")
    first = url.split(";")[0]
    assert uri == first
    found = FlowerBroker(
        uri,
        http_api=None,
        broker_options=app.conf.broker_transport_options,
        broker_use_ssl=app.conf.broker_use_ssl,
    )
    assert type(found).__name__ == reader
    if reader != "RabbitMQ":  # Tasklane's priority sub-lists, and the master's name
        assert (found.priority_steps, found.sep) == (list(range(10)), ":")
        assert getattr(found, "master_name", MASTER) == MASTER


def test_flower_shows_queue_lengths_of_the_master_sentinel_names_through_a_failover(
    broker: Broker, tmp_path: Path, processes: list[WorkerProcess]
) -> None:
    broker.publish(BEFORE, wait_replicas=1)
    flower = Flower(broker.env(), tmp_path / "flower.log")
    processes.append(flower.process)
    flower.wait_ready()

    # Behind basic auth, as on any broker.
    for auth in (None, (FLOWER_AUTH[0], "wrong-password-0123")):
        assert flower.get("/api/queues/length", auth=auth).status_code == 401
    # Remote control over Sentinel: no worker runs, so an empty answer, not an error.
    workers = flower.get("/api/workers?refresh=1")
    assert workers.status_code == 200, workers.text
    assert workers.json() == {}

    last: list[dict[str, int] | str] = []

    def lengths(email: int) -> bool:
        running(flower.process)
        last.append(flower.queue_lengths())
        return last[-1] == broker.expected_depths(email)

    eventually(
        lambda: lengths(BEFORE),
        timeout=START_TIMEOUT,
        interval=0.5,
        message=lambda: (
            f"{BEFORE} messages in Flower; last read {last[-1:]}\n{flower.process.output()[-3000:]}"
        ),
    )
    # The broker tab renders the same read, and names the Sentinel without its password.
    page = flower.get("/broker")
    assert page.status_code == 200
    assert broker.email_queue in page.text
    assert "sentinel://" in page.text and REDIS_PASSWORD not in page.text

    new = broker.fail_over()

    eventually(
        lambda: lengths(BEFORE + AFTER),
        timeout=FOLLOW_TIMEOUT,
        interval=0.5,
        message=lambda: (
            f"{BEFORE + AFTER} messages in Flower from the new master {new}; last read "
            f"{last[-1:]}\n{flower.process.output()[-3000:]}"
        ),
    )
    broker.report("tasklane flower")
    running(flower.process)
