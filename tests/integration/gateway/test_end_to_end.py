"""Through the gateway to a real notifier worker and an SMTP sink, on Redis and on RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tasklane.contracts import EmailResult
from tasklane_dev.sinks import SmtpSink
from tests.integration.gateway.conftest import NOTIFIER_TOKEN, StartGateway
from tests.support import eventually
from tests.support.gateway import waiting
from tests.support.harness import BrokerEnv, WorkerProcess

EMAIL = "/v1/tasks/notifier.email.send"


def finished(client: httpx.Client, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        return body if body["state"] in ("SUCCESS", "FAILURE") else None

    return eventually(done, timeout=60, interval=0.2, message=f"task {task_id} to finish")


def test_publish_on_each_broker_queues_the_task(
    start_gateway: StartGateway, broker: BrokerEnv
) -> None:
    gateway = start_gateway()
    with gateway.client(NOTIFIER_TOKEN) as client:
        one = client.post(EMAIL, json={"to": ["ada@example.com"], "subject": "s", "text": "t"})
        many = client.post(
            f"{EMAIL}/batch",
            json={"payloads": [{"to": [f"u{i}@example.com"], "subject": "s", "text": "t"}
                               for i in range(5)]},
        )  # fmt: skip
    assert one.status_code == 202, one.text
    assert many.status_code == 202, many.text
    eventually(
        lambda: waiting(broker, "notifier.email") == 6,
        timeout=10,
        message="6 messages in notifier.email",
    )


def test_email_through_the_gateway_is_delivered_and_its_result_read_back(
    start_gateway: StartGateway,
    start_worker: Callable[..., WorkerProcess],
    smtp_sink: SmtpSink,
) -> None:
    start_worker()
    gateway = start_gateway()
    with gateway.client(NOTIFIER_TOKEN) as client:
        accepted = client.post(
            EMAIL, json={"to": ["ada@example.com"], "subject": "Gateway", "text": "Hello."}
        )
        assert accepted.status_code == 202, accepted.text
        status = finished(client, accepted.json()["task_id"])

        failing = client.post(
            EMAIL, json={"to": ["ada@example.com"], "subject": "x", "template": "no_such_template"}
        )
        failed = finished(client, failing.json()["task_id"])
    (mail,) = smtp_sink.wait_for(1)
    assert mail.recipients == ["ada@example.com"]
    assert status["state"] == "SUCCESS"
    result = EmailResult.model_validate(status["result"])
    assert result.accepted == ["ada@example.com"]
    assert status["error"] is None and status["dead_letter_reason"] is None

    assert failed["state"] == "FAILURE"
    assert failed["result"] is None
    assert failed["error"]["type"] == "PermanentError"
    assert "no_such_template" in failed["error"]["message"]
    assert failed["dead_letter_reason"] == "permanent-error"
