"""A worker killed with SIGKILL mid-delivery loses nothing and delivers once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tasklane.publish import Publisher
from tasklane_dev.sinks import SmtpSink
from tests.support.harness import BrokerEnv, WorkerProcess

# Redis hands an unacknowledged message to another worker only after the visibility timeout,
# which must exceed the longest hard time limit (45 s for email): the smallest allowed value.
REDIS_VISIBILITY_TIMEOUT = "50"
# After it, a running worker's sweep (every 10 s) returns the message; the rest is slack.
REDIS_REDELIVERY_BOUND = 50 + 10 + 15


def test_kill_9_before_the_server_accepted_delivers_exactly_once(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    entered, release = threading.Event(), threading.Event()
    attempts: list[list[str]] = []

    def stall_first_delivery(recipients: list[str]) -> str | None:
        attempts.append(recipients)
        if len(attempts) == 1:
            entered.set()
            release.wait(30)
            return "451 4.3.0 delivery interrupted"  # the first attempt is never accepted
        return None

    with SmtpSink(before_data=stall_first_delivery) as sink:
        env = {**broker.env(), "TASKLANE_NOTIFIER_SMTP_PORT": str(sink.port)}
        if broker.kind == "redis":
            env["TASKLANE_VISIBILITY_TIMEOUT"] = REDIS_VISIBILITY_TIMEOUT
        first = WorkerProcess("notifier", env, tmp_path / "first.log", concurrency=2)
        second: WorkerProcess | None = None
        try:
            first.wait_ready()
            with Publisher(broker.settings) as publisher:
                handle = publisher.publish(
                    "notifier.email.send",
                    {"to": ["ada@example.com"], "subject": "Receipt", "text": "Order 7",
                     "idempotency_key": "receipt-7"},
                )  # fmt: skip
                assert entered.wait(20), first.output()
                first.kill()  # main process and pool children, mid-delivery
                release.set()
                second = WorkerProcess("notifier", env, tmp_path / "second.log", concurrency=2)
                second.wait_ready()
                bound = REDIS_REDELIVERY_BOUND if broker.kind == "redis" else 30
                result = handle.get(timeout=bound)
            time.sleep(1)  # let any duplicate surface
        finally:
            first.stop()
            if second is not None:
                second.stop()
    assert len(sink.messages) == 1
    assert len(attempts) == 2  # the interrupted attempt and the one that went through
    assert sink.messages[0].message["Message-ID"] == result.message_id
    assert not result.deduplicated
