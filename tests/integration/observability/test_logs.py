"""Worker logs as JSON lines that name the task, its queue and attempt."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, WebhookSink
from tests.support import eventually
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


def _send_email(broker: BrokerEnv, to: str) -> str:
    payload = {"to": [to], "subject": "Logged?", "text": "Hello"}
    with Publisher(broker.settings) as publisher:
        handle = publisher.publish("notifier.email.send", payload)
        assert to in handle.get(timeout=30).accepted
        return handle.id


def _succeeded_line(worker: WorkerProcess, task_id: str) -> str:
    # The result is stored before Celery logs the line: wait for the line itself.
    marker = f"{task_id}] succeeded in"

    def found() -> str | None:
        return next((line for line in worker.output().splitlines() if marker in line), None)

    return eventually(found, timeout=20, message=lambda: worker.output()[-2000:])


def test_payloads_and_results_with_addresses_stay_out_of_the_log_by_default(
    broker: BrokerEnv, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(TASKLANE_LOG_FORMAT="json")
    task_id = _send_email(broker, "ada.private@example.com")
    line = _succeeded_line(worker, task_id)
    assert json.loads(line)["message"].endswith("s")  # "… succeeded in 0.01s", nothing after
    received = [r for r in json_lines(worker.output()) if r["message"].endswith("received")]
    assert received and received[0]["data"]["id"] == task_id  # the line is there, its id too
    assert "ada.private" not in worker.output()


def test_payloads_and_results_are_logged_when_the_setting_asks_for_them(
    broker: BrokerEnv, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(TASKLANE_LOG_FORMAT="json", TASKLANE_LOG_TASK_DATA="true")
    task_id = _send_email(broker, "grace.shown@example.com")
    succeeded = json.loads(_succeeded_line(worker, task_id))
    assert "grace.shown@example.com" in succeeded["message"]
    (received,) = [
        r for r in json_lines(worker.output()) if r["message"].endswith(f"{task_id}] received")
    ]
    assert "grace.shown@example.com" in received["data"]["kwargs"]
