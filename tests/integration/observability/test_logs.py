"""Worker logs as JSON lines that name the task, its queue and attempt."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, WebhookSink
from tests.support.harness import BrokerEnv, WorkerProcess


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_retry_is_logged_as_json_with_the_task_queue_and_attempt(
    broker: BrokerEnv,
    start_worker: Callable[..., WorkerProcess],
    webhook_sink: WebhookSink,
) -> None:
    worker = start_worker(TASKLANE_LOG_FORMAT="json")
    webhook_sink.script(Reply(status=500), Reply())
    payload = {"channel": "webhook", "url": f"{webhook_sink.url}/hook", "text": "logged"}
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish("notifier.im.send", payload)
        handle.get(timeout=30)
        queue = f"{broker.namespace}{publisher.contract('notifier.im.send').queue}"
    lines = json_lines(worker.output())
    assert lines, worker.output()[-2000:]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    (retry,) = [line for line in lines if "retrying in" in line["message"]]
    assert retry["task_id"] == handle.id
    assert retry["task_name"] == "notifier.im.send"
    assert retry["queue"] == queue
    assert retry["attempt"] == 1
    assert retry["level"] == "WARNING"
