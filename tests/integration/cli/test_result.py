"""``tasklane result ID`` against a real notifier worker and SMTP server, on both brokers."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tasklane.cli.main import app
from tasklane.publish import Publisher
from tasklane_dev.sinks import SmtpSink
from tests.support.harness import BrokerEnv, WorkerProcess, wait_for_dead_letters

REFUSED = "refused@example.com"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """An SMTP server that refuses one mailbox for good (550), so its task fails permanently."""

    def refuse(recipients: list[str]) -> str | None:
        return "550 mailbox unavailable" if REFUSED in recipients else None

    with SmtpSink(before_data=refuse) as sink:
        yield sink


@pytest.fixture
def cli(broker: BrokerEnv, monkeypatch: pytest.MonkeyPatch) -> BrokerEnv:
    for key, value in broker.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    return broker


def run(*args: str, code: int) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    return result


def email(to: str) -> dict[str, Any]:
    return {"to": [to], "subject": "Hello", "text": "Hi", "idempotency_key": uuid.uuid4().hex}


def test_result_shows_a_typed_result_and_a_failure_with_its_dead_letter_reason(
    cli: BrokerEnv, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker()
    with Publisher(cli.settings) as publisher:
        sent = publisher.publish("notifier.email.send", email("ada@example.com"))
        refused = publisher.publish("notifier.email.send", email(REFUSED))

    ok = run("result", sent.id, "--wait", "--timeout", "60", code=0).output
    lines = ok.splitlines()
    assert lines[:4] == [
        f"task id: {sent.id}",
        "task: notifier.email.send",
        "state: SUCCESS",
        "result:",
    ]
    result = json.loads("\n".join(lines[4:]))
    assert result["accepted"] == ["ada@example.com"]
    assert re.fullmatch(r"<.+@.+>", result["message_id"])

    wait_for_dead_letters(cli, "notifier.email", 1, timeout=60)
    failed = run("result", refused.id, "--wait", "--timeout", "60", code=1).output.splitlines()
    assert failed[:3] == [f"task id: {refused.id}", "task: notifier.email.send", "state: FAILURE"]
    assert failed[3].startswith("error: PermanentError: ")
    assert "550" in failed[3]
    assert failed[4] == "dead-letter reason: permanent-error"

    document = json.loads(run("result", refused.id, "--json", code=1).stdout)
    assert document == {
        "task_id": refused.id,
        "task": "notifier.email.send",
        "state": "FAILURE",
        "result": None,
        "error": {"type": "PermanentError", "message": document["error"]["message"]},
        "dead_letter_reason": "permanent-error",
        "found": True,
    }
    typed = json.loads(run("result", sent.id, "--json", code=0).stdout)
    assert typed["state"] == "SUCCESS" and typed["found"] is True
    assert typed["result"] == result


def test_result_of_an_unknown_id_says_no_such_task_and_exits_1(cli: BrokerEnv) -> None:
    unknown = str(uuid.uuid4())

    output = run("result", unknown, code=1).output

    assert output.splitlines() == [
        f"task id: {unknown}",
        "state: PENDING (no such task or not started yet: the result backend has no record of it)",
    ]
    document = json.loads(run("result", unknown, "--json", code=1).stdout)
    assert (document["state"], document["found"], document["task"]) == ("PENDING", False, None)
    waited = run("result", unknown, "--wait", "--timeout", "0.5", code=1).output
    assert "no result in 0.5s (no such task or not started yet, or still running)" in waited
