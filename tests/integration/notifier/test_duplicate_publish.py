"""A task published twice with the same task id, both copies running at once, delivers once.

An upstream whose publish raised ``BrokerUnavailableError`` publishes again with the same task id
and idempotency key, as the README tells it to. When the first publish had reached the broker after
all (its confirm lost in the outage), two messages of one task id arrive together. The second used
to take the first's claim over as if it were a redelivery after a crash, and both delivered (the
fault suite's RabbitMQ broker restart showed it). Only a redelivery takes its own claim over.
"""

from __future__ import annotations

from typing import Any

import pytest

from tasklane.contracts import SEND_IM
from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, WebhookSink
from tests.support import eventually
from tests.support.harness import BrokerEnv

pytestmark = pytest.mark.integration


def test_two_copies_of_one_task_id_running_together_deliver_once(
    broker: BrokerEnv, start_worker: Any, webhook_sink: WebhookSink
) -> None:
    # The first delivery is held at the receiver long enough for the second copy to run beside it.
    webhook_sink.script(Reply(delay=15))
    # Results in the log: the second copy's answer is only seen in its "succeeded" line.
    worker = start_worker(
        concurrency=2, TASKLANE_NOTIFIER_WEBHOOK_TIMEOUT="60", TASKLANE_LOG_TASK_DATA="true"
    )
    im = {"channel": "webhook", "url": webhook_sink.url, "text": "Order 31 shipped",
          "idempotency_key": "order-31"}  # fmt: skip
    with Publisher(broker.settings) as publisher:
        first = publisher.publish(SEND_IM, im, task_id="order-31-im")
        eventually(
            lambda: webhook_sink.requests,
            timeout=30,
            message=lambda: f"the first copy at the receiver\n{worker.output()[-2000:]}",
        )
        publisher.publish(SEND_IM, im, task_id="order-31-im")  # the same task id again
        eventually(
            lambda: "deduplicated': True" in worker.output() or len(webhook_sink.requests) > 1,
            timeout=60,
            message=lambda: f"the second copy answered\n{worker.output()[-3000:]}",
        )
        assert len(webhook_sink.requests) == 1, "the second copy delivered too"
        assert first.get(timeout=60).status_code == 200
    assert worker.output().count("[order-31-im] received") >= 2
