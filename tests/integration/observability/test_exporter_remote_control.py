"""``tasklane exporter`` beside remote control: workers keep answering, the broker keeps no trace.

An events-based exporter that probes workers by remote control (celery-exporter) broke Flower and
``celery inspect`` on a Tasklane Redis broker and left a binding row behind. Here a real worker,
Flower and ``tasklane exporter`` share a namespaced Redis broker of the test's own, with priority 5
messages waiting: across several broker reads of the exporter, every ping is answered and Flower
lists the worker; when the exporter stops, Redis holds no key and no binding row it did not
hold before.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tasklane.contracts import SEND_EMAIL
from tasklane.publish import Publisher
from tasklane.wire.broker import redis_queue_keys, transport_options
from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, RedisServer, WorkerProcess

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
AUTH = ("ops", "flower-pass-0123")
EMAIL = {"to": ["ada@example.com"], "subject": "hi", "text": "hello"}
#: Messages left waiting in the email queue, which the worker does not consume.
WAITING = 3
#: Broker reads of the exporter the pings and Flower must live through.
READS = 4


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own: every key in it comes from the processes started here."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def _keys(client: redis.Redis) -> dict[str, frozenset[str]]:
    """Every key; for Kombu's binding sets, their rows too."""
    found: dict[str, frozenset[str]] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        rows = client.smembers(key) if key.startswith("_kombu.binding.") else set()
        found[key] = frozenset(str(row) for row in rows)
    return found


def _transient(key: str) -> bool:
    # Reply mailboxes of the test's and Flower's own control calls (Redis drops a list once it
    # is emptied), and what the worker writes for its own reserved messages.
    return key.endswith(".reply.celery.pidbox") or key.startswith("unacked")


def _exporter_reads(port: int) -> float:
    """The exporter's last broker read time; each scrape after ``--interval`` reads again."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["tasklane_exporter_up"].value == 1
    return samples["tasklane_exporter_scrape_duration_seconds"].value


def _waiting(port: int, queue: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tasklane_queue_messages" and sample.labels["queue"] == queue:
                return sample.value
    return None


def test_workers_answer_remote_control_while_the_exporter_reads_and_it_leaves_no_key(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    broker = BrokerEnv("redis", own_redis.url, own_redis.url, "eu.staging.")
    assert SEND_EMAIL.priority == 5
    name = f"notifier-{uuid.uuid4().hex[:6]}@remotecontrol"
    # Heartbeats on, as production workers run; only notifier.im consumed, so email waits.
    worker_command = [TASKLANE, "worker", "notifier", "--concurrency", "1",
                      "--queues", "notifier.im",
                      "--", "--without-gossip", "--without-mingle", "-n", name]  # fmt: skip
    worker = WorkerProcess.from_command(worker_command, broker.env(), tmp_path / "worker.log")
    flower_port, exporter_port = free_port(), free_port()
    flower_env = {
        **broker.env(),
        "TASKLANE_FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}",
        "TASKLANE_FLOWER_PORT": str(flower_port),
        "TASKLANE_FLOWER_ADDRESS": "127.0.0.1",
    }
    flower = WorkerProcess.from_command([TASKLANE, "flower"], flower_env, tmp_path / "flower.log")
    exporter: WorkerProcess | None = None
    # The control client a person's `celery inspect` would be: Tasklane's transport options.
    control = Celery(broker=own_redis.url, set_as_current=False)
    control.conf.broker_transport_options = transport_options(broker.settings)
    client = redis.Redis.from_url(own_redis.url)
    try:
        worker.wait_ready()
        with Publisher(broker.settings) as publisher:
            for _ in range(WAITING):
                publisher.publish(SEND_EMAIL.name, EMAIL)

        def pinged() -> bool:
            replies: list[dict[str, Any]] = control.control.ping(destination=[name], timeout=2)
            return replies == [{name: {"ok": "pong"}}]

        def listed() -> bool:
            answer = httpx.get(
                f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", auth=AUTH, timeout=10
            )
            return answer.status_code == 200 and name in answer.json()

        # Both answer before the exporter starts: the baseline, bindings of every client made.
        eventually(pinged, timeout=30, interval=0.5, message=f"{name} answering a ping")
        eventually(
            listed,
            timeout=60,
            interval=0.5,
            message=f"Flower listing {name}",
            ignoring=(httpx.TransportError,),  # Flower still starting
        )
        before = _keys(client)
        # The snapshot sees the binding rows remote control relies on (where a leftover hurt).
        assert "_kombu.binding.celery.pidbox" in before, sorted(before)
        assert before["_kombu.binding.celery.pidbox"], "no binding row of the worker's mailbox"

        exporter_command = [TASKLANE, "exporter", "--port", str(exporter_port), "--interval", "1"]
        exporter = WorkerProcess.from_command(
            exporter_command, broker.env(), tmp_path / "exporter.log"
        )
        email_queue = f"{broker.namespace}{SEND_EMAIL.queue}"
        # Every priority sub-list counted: the messages of priority 5 are all there.
        eventually(
            lambda: _waiting(exporter_port, email_queue) == WAITING,
            timeout=20,
            interval=0.2,
            message=f"the exporter counting {WAITING} waiting emails",
            ignoring=(httpx.TransportError,),
        )
        reads: set[float] = set()
        while len(reads) < READS:
            reads.add(
                eventually(
                    lambda: (value := _exporter_reads(exporter_port)) not in reads and value,
                    timeout=10,
                    interval=0.2,
                    message="a new broker read of the exporter",
                )
            )
            # Answered after each read. The fault this guards against left a worker silent for
            # about an hour (0 replies to 12 pings); a wait covers only a busy machine's delays.
            eventually(pinged, timeout=20, interval=0.5, message=f"a pong after {len(reads)} reads")
            eventually(
                listed, timeout=20, interval=0.5, message=f"Flower listing after {len(reads)} reads"
            )

        exporter.stop()
        assert exporter.process.returncode is not None
        after = _keys(client)
        left = sum(client.llen(key) for key in redis_queue_keys(email_queue))
    finally:
        for process in (exporter, flower, worker):
            if process is not None:
                process.stop()
        client.close()
        control.close()

    new_keys = sorted(key for key in set(after) - set(before) if not _transient(key))
    assert new_keys == []
    new_rows = {
        key: sorted(after[key] - before.get(key, frozenset()))
        for key in after
        if key.startswith("_kombu.binding.") and after[key] - before.get(key, frozenset())
    }
    assert new_rows == {}
    assert left == WAITING  # the exporter only reads: the waiting messages are all still there
