"""Losing a RabbitMQ node: a three-node cluster with quorum queues, its queue leader killed while
workers drain and a publisher keeps publishing.

Counted at an independent sink (the SMTP server the notifier delivers to): what was published
and confirmed, what arrived once, twice, or never, and how long deliveries stopped. The figures
of a run are printed (``-s``) and written down in docs/reliability.md#losing-a-broker-node.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from tasklane.contracts import SEND_EMAIL
from tasklane.publish import Publisher
from tasklane.wire.routing import queue_name
from tasklane_dev.sinks import SmtpSink
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup
from tests.support.rabbit_cluster import RabbitCluster

# Three broker nodes start, die and start again beside the rest of the suite: minutes, not seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BEFORE = 500  # published before the kill
AFTER = 500  # published from the moment of the kill on
LATE = 10  # published to a worker started while the killed node is still down


def email(n: int) -> dict[str, object]:
    # The idempotency key lets a redelivered task find its first run's result instead of
    # sending again: what duplicates remain are the ones the worker could not know about.
    return {
        "to": ["ops@example.com"],
        "subject": f"n-{n}",
        "text": "node loss",
        "idempotency_key": f"node-loss-{n}",
    }


#: Loggers of per-task lines, left out of the printed timeline.
TASK_LOGGERS = {"celery.app.trace", "celery.worker.strategy"}


def worker_events(log: str, since: float, within: float) -> list[tuple[float, str]]:
    """The worker's JSON log records from ``since`` (a Unix time) for ``within`` seconds, per-task
    ones left out: each as its seconds after ``since`` and the first line of its message."""
    events = []
    for line in log.splitlines():
        if not line.startswith("{"):
            continue  # Celery's banner, warnings
        try:
            record = json.loads(line)
            # Python logging's asctime: local time, the worker's and this process's alike.
            logged = datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f")
        except (ValueError, KeyError):
            continue  # two processes' lines interleaved: the printout only, never the verdict
        offset = logged.timestamp() - since
        if 0 <= offset <= within and record["logger"] not in TASK_LOGGERS:
            message = str(record["message"]).splitlines()[0][:110]
            events.append((offset, f"{record['logger'].rsplit('.', 1)[-1]}: {message}"))
    return events


def test_killing_the_queue_leader_loses_no_confirmed_task(tmp_path: Path, redis_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}."
    arrivals: list[float] = []

    def arrived(recipients: list[str]) -> None:
        arrivals.append(time.monotonic())

    with RabbitCluster(tmp_path / "cluster") as cluster, SmtpSink(before_data=arrived) as smtp_sink:
        # Every client tries node 0 first, so node 0 leads the queues and holds the connections:
        # killing it makes the workers and the publisher fail over as well.
        broker = BrokerEnv("rabbitmq", ";".join(cluster.urls), redis_url, namespace)
        settings = broker.settings.model_copy(update={"rabbitmq_queue_type": "quorum"})
        env = {
            **broker.env(),
            "TASKLANE_RABBITMQ_QUEUE_TYPE": "quorum",
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp_sink.port),
            # Timestamped JSON records, which the printed timeline reads.
            "TASKLANE_LOG_FORMAT": "json",
        }
        worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=2)
        try:
            worker.wait_ready(timeout=120)
            queue = queue_name(SEND_EMAIL, namespace)
            confirmed: list[int] = []
            with Publisher(settings) as publisher:
                for n in range(BEFORE):
                    publisher.publish(SEND_EMAIL, email(n))
                    confirmed.append(n)
                leader = cluster.queue_leader(queue)
                assert leader == 0
                smtp_sink.wait_for(BEFORE // 5, timeout=120)  # mid-drain

                killed_at = time.monotonic()
                killed_wall = time.time()
                killer = threading.Thread(target=cluster.kill_node, args=(leader,))
                killer.start()
                # Publishing goes on through the kill: each call returns once a node confirmed.
                for n in range(BEFORE, BEFORE + AFTER):
                    publisher.publish(SEND_EMAIL, email(n))
                    confirmed.append(n)
                killer.join()

            total = BEFORE + AFTER
            eventually(
                lambda: len({m.message["Subject"] for m in smtp_sink.messages}) >= total,
                timeout=300,
                interval=1.0,
                message=lambda: (
                    f"{total} distinct emails, not "
                    f"{len({m.message['Subject'] for m in smtp_sink.messages})}\n"
                    f"{worker.output()[-3000:]}"
                ),
            )
            mails = smtp_sink.messages
            subjects = Counter(m.message["Subject"] for m in mails)
            # Deliveries stopped for the longest gap between two arrivals after the kill.
            after = [killed_at] + sorted(t for t in arrivals if t > killed_at)
            stopped, resumed = max((b - a, b) for a, b in zip(after, after[1:], strict=False))
            lost = [n for n in confirmed if subjects[f"n-{n}"] == 0]
            twice = sum(1 for count in subjects.values() if count > 1)
            print(
                f"\nnode loss (RabbitMQ, 3 nodes, quorum): confirmed {len(confirmed)}, "
                f"delivered once {sum(1 for c in subjects.values() if c == 1)}, more than once "
                f"{twice}, lost {len(lost)}; deliveries stopped for {stopped:.1f} s at most"
            )
            # Where the stop went: the worker's own log lines (not per-task ones) from the kill
            # to the first delivery after the stop, in seconds after the kill.
            resumed_after = resumed - killed_at
            print(f"first delivery after the stop: +{resumed_after:.2f} s after the kill")
            for offset, line in worker_events(worker.output(), killed_wall, resumed_after):
                print(f"  worker {offset:+7.2f} s  {line}")
            assert lost == []
            assert len(confirmed) == total
            # The delay levels are declared once over the failover connection, not per node URL
            # with retries on the dead one (Celery's step: about 17 s without deliveries).
            assert "Failed to declare" not in worker.output()
            assert "Failed to setup delayed delivery" not in worker.output()

            # A worker started while node 0 is still down consumes at once: its first URL is
            # passed over, not retried (Celery's step waited about 17 s on it before the loop).
            worker.stop()
            late = WorkerProcess("notifier", env, tmp_path / "late-worker.log", concurrency=2)
            try:
                started = time.monotonic()
                late.wait_ready(timeout=120)
                extra = {f"n-{n}" for n in range(total, total + LATE)}
                with Publisher(settings) as publisher:
                    for n in range(total, total + LATE):
                        publisher.publish(SEND_EMAIL, email(n))
                eventually(
                    lambda: extra <= {m.message["Subject"] for m in smtp_sink.messages},
                    timeout=120,
                    interval=0.5,
                    message=lambda: (
                        f"{LATE} emails through a worker started after the kill\n"
                        + late.output()[-3000:]
                    ),
                )
                print(
                    f"a worker started with node 0 down delivered {LATE} emails "
                    f"{time.monotonic() - started:.1f} s after it started"
                )
                assert "Failed to declare" not in late.output()
                assert "Failed to setup delayed delivery" not in late.output()
            finally:
                late.stop()

            cluster.start_node(leader)
            assert cluster.running_nodes() == [0, 1, 2]
            cleanup(broker)
        finally:
            worker.stop()
