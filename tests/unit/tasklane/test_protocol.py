from __future__ import annotations

import json

from tasklane.wire.headers import PUBLISHED_AT
from tasklane.wire.protocol import encode_body, task_message


def test_task_message_is_celery_protocol_v2_in_json() -> None:
    message = task_message("notifier.email.send", "id-1", {"to": ["a@example.com"]}, priority=4)
    args, kwargs, embed = json.loads(message.body)
    assert args == [] and kwargs == {"to": ["a@example.com"]}
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    headers = message.headers
    assert headers["lang"] == "py"
    assert headers["task"] == "notifier.email.send"
    assert headers["id"] == headers["root_id"] == "id-1"
    assert headers["retries"] == 0
    assert isinstance(headers[PUBLISHED_AT], float)
    assert message.properties == {"correlation_id": "id-1", "priority": 4}
    assert json.loads(headers["kwargsrepr"]) == {"to": ["a@example.com"]}


def test_kwargsrepr_is_capped() -> None:
    message = task_message("x.y.z", "id", {"text": "a" * 5000})
    assert len(message.headers["kwargsrepr"]) == 512
    assert message.headers["kwargsrepr"].endswith("...")


def test_body_is_compact_utf8() -> None:
    assert encode_body({"name": "Zoë"}) == '[[],{"name":"Zoë"},'.encode() + (
        b'{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
    )


def test_countdown_sets_an_eta_the_worker_holds_the_task_until() -> None:
    from datetime import UTC, datetime

    before = datetime.now(UTC)
    message = task_message("notifier.email.send", "id-1", {}, countdown=30)
    eta = datetime.fromisoformat(message.headers["eta"])
    assert eta.tzinfo is not None
    assert 29.9 <= (eta - before).total_seconds() <= 31
    assert task_message("notifier.email.send", "id-2", {}).headers["eta"] is None
