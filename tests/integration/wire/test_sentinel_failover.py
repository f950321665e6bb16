"""Redis behind Sentinel: ``sentinel://`` URLs for the broker, results and idempotency, and the
master killed while a worker drains and a publisher keeps publishing.

Redis replicates asynchronously: what the master took in its last moments may never have
reached the replica that is promoted. The test counts at an independent sink (the SMTP server the
notifier delivers to) and asserts what must hold anyway: every task published after the kill is
delivered, and the worker and the long-lived publisher follow the new master. What was published
before and has not arrived is reported, not asserted: it may be lost, or wait in the new master's
unacknowledged set for the visibility timeout.
Figures are printed (``-s``) and written down in docs/reliability.md#losing-a-broker-node.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tasklane.contracts import SEND_EMAIL
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane_dev.sinks import SmtpSink
from tests.support import eventually
from tests.support.harness import WorkerProcess
from tests.support.sentinel import SentinelGroup

# Three broker nodes start, die and start again beside the rest of the suite: minutes, not seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BEFORE = 300  # published before the kill
AFTER = 300  # published from the moment of the kill on


def email(n: int) -> dict[str, object]:
    return {
        "to": ["ops@example.com"],
        "subject": f"n-{n}",
        "text": "failover",
        "idempotency_key": f"failover-{n}",
    }


@pytest.mark.parametrize("replicas", [0, 1], ids=["no-wait", "wait-1-replica"])
def test_a_master_killed_mid_drain_is_followed_by_workers_and_publisher(
    tmp_path: Path, replicas: int
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}."
    arrivals: list[float] = []

    def arrived(recipients: list[str]) -> None:
        arrivals.append(time.monotonic())

    with (
        SentinelGroup(tmp_path / "redis", master_name="tasklane") as group,
        SmtpSink(before_data=arrived) as smtp_sink,
    ):
        url = group.broker_url(0)
        settings = Settings(
            broker_url=url,
            namespace=namespace,
            redis_sentinel_master="tasklane",
            # Long enough to ride out the failover (Sentinel: 1 s to notice, then the vote) and,
            # waiting for a replica, until the old master is back as the new one's replica.
            publish_timeout=90,
            redis_wait_replicas=replicas,
        )
        assert settings.result_backend == url and settings.state_url == url
        env = {
            "TASKLANE_BROKER_URL": url,
            "TASKLANE_NAMESPACE": namespace,
            "TASKLANE_REDIS_SENTINEL_MASTER": "tasklane",
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp_sink.port),
        }
        worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=2)
        try:
            worker.wait_ready(timeout=120)
            with Publisher(settings) as publisher:
                handles = [publisher.publish(SEND_EMAIL, email(n)) for n in range(BEFORE)]
                smtp_sink.wait_for(BEFORE // 6, timeout=120)  # mid-drain

                old = group.master()
                killed_at = time.monotonic()

                def fail_over() -> None:
                    group.kill_master()
                    new = group.wait_for_failover(old)
                    if replicas:
                        # The promoted master has no replica: writes that wait for one wait
                        # until the old master is back, as the new one's replica.
                        group.restart(old[1])
                        group.wait_for_replica(old, new)

                killer = threading.Thread(target=fail_over)
                killer.start()
                after_kill = [
                    publisher.publish(SEND_EMAIL, email(n)) for n in range(BEFORE, BEFORE + AFTER)
                ]
                killer.join()
                new = group.wait_for_failover(old)
                assert new != old

            # Every task published once the old master was gone reached the new one.
            wanted = {f"n-{n}" for n in range(BEFORE, BEFORE + AFTER)}
            eventually(
                lambda: wanted <= {m.message["Subject"] for m in smtp_sink.messages},
                timeout=150,
                interval=1.0,
                message=lambda: (
                    f"the {AFTER} emails published after the kill, "
                    f"{len(wanted & {m.message['Subject'] for m in smtp_sink.messages})} came\n"
                    f"{worker.output()[-3000:]}"
                ),
            )
            # The result backend follows the new master too.
            assert after_kill[-1].get(timeout=60).accepted == ["ops@example.com"]
            subjects = Counter(m.message["Subject"] for m in smtp_sink.messages)
            # Not (yet) delivered: lost in the replication window, or claimed by the worker on the
            # old master and waiting in the new one's unacknowledged set for the visibility
            # timeout (705 s); this test does not wait that long, so it reports them.
            lost = [n for n in range(BEFORE) if subjects[f"n-{n}"] == 0]
            twice = sum(1 for count in subjects.values() if count > 1)
            after = [killed_at] + sorted(t for t in arrivals if t > killed_at)
            stopped = max(b - a for a, b in zip(after, after[1:], strict=False))
            print(
                f"\nfailover (Redis, master + replica + 3 sentinels, WAIT {replicas}): published "
                f"{len(handles) + len(after_kill)}, delivered once "
                f"{sum(1 for c in subjects.values() if c == 1)}, more than once {twice}, "
                f"not delivered {len(lost)} (all published before the kill); deliveries stopped "
                f"for {stopped:.1f} s at most"
            )
        finally:
            worker.stop()
