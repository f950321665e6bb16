"""The ``tasklane`` command against real brokers: Redis and RabbitMQ."""

from __future__ import annotations

import re
import shlex
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection
from typer.testing import CliRunner, Result

from tasklane.cli.main import app
from tasklane.contracts import REGISTRY, SEND_EMAIL, TaskContract
from tasklane.errors import PermanentError
from tasklane.settings import Settings, load_settings
from tasklane.wire.broker import connect
from tasklane.wire.headers import REASON
from tasklane.wire.routing import (
    QueueOptions,
    dead_letter_exchange,
    dlq_name,
    queue_name,
    work_queue,
)
from tests.support import eventually
from tests.support.harness import dead_letter_email

REDIS_URL = "redis://127.0.0.1:6379/11"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
GOOD = '{"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"}'


@dataclass
class CliEnv:
    """One test's broker and namespace, with the task ids whose results must be deleted."""

    kind: str
    namespace: str
    settings: Settings
    task_ids: list[str] = field(default_factory=list)

    def q(self, name: str) -> str:
        return f"{self.namespace}{name}"


@pytest.fixture(params=["redis", "rabbitmq"])
def cli_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliEnv]:
    """The CLI's environment for one broker, in a namespace of the test's own."""
    namespace = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("TASKLANE_NAMESPACE", namespace)
    if request.param == "redis":
        # The result backend is left to default to the Redis broker, as in production.
        monkeypatch.setenv("TASKLANE_BROKER_URL", REDIS_URL)
    else:
        monkeypatch.setenv("TASKLANE_BROKER_URL", AMQP_URL)
        monkeypatch.setenv("TASKLANE_RESULT_BACKEND", REDIS_URL)
    # Wide, colourless output so tables are never wrapped or interleaved with escape codes.
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    env = CliEnv(request.param, namespace, load_settings())
    try:
        yield env
    finally:
        _cleanup(env)


def _cleanup(env: CliEnv) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"*{env.namespace}*"))
        keys += [f"celery-task-meta-{task_id}" for task_id in env.task_ids]
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    if env.kind != "rabbitmq":
        return
    with Connection(AMQP_URL) as connection:
        channel = connection.channel()
        for contract in REGISTRY:
            name = queue_name(contract, env.namespace)
            channel.queue_delete(name)
            channel.queue_delete(dlq_name(name))
            channel.exchange_delete(name)
        channel.exchange_delete(dead_letter_exchange(env.namespace).name)
        channel.close()


def run(*args: str, code: int = 0, input: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input)
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    return result


def depths() -> dict[str, int]:
    """``tasklane queues`` parsed: queue name to messages waiting."""
    found: dict[str, int] = {}
    for line in run("queues").output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) == 3 and cells[2].isdigit():
            found[cells[0]] = int(cells[2])
    return found


def expected_depths(env: CliEnv, **waiting: int) -> dict[str, int]:
    """Every queue of the registry at 0, except ``waiting`` (keys: queue names, dots as _)."""
    queues = {contract.queue for contract in REGISTRY}
    names = sorted(queues) + sorted(dlq_name(queue) for queue in queues)
    return {env.q(name): waiting.get(name.replace(".", "_"), 0) for name in names}


def take_all(env: CliEnv, contract: TaskContract[Any, Any]) -> list[dict[str, Any]]:
    """Remove every message of a contract's work queue; their headers, oldest first."""
    taken: list[dict[str, Any]] = []
    with connect(env.settings) as connection, connection.channel() as channel:
        queue = work_queue(contract, env.namespace, QueueOptions.of(env.settings)).bind(channel)
        while (message := queue.get(no_ack=True, accept=["json"])) is not None:
            taken.append(dict(message.headers))
    return taken


def dead_letter(env: CliEnv, subject: str, error: str) -> str:
    """Put one email task into the email DLQ as a worker would; returns its task id."""
    return dead_letter_email(env.settings, error, subject)


def answer_next_task(env: CliEnv, store: Callable[[Celery, str], None]) -> threading.Thread:
    """Stand in for a worker: take the next email task from the real queue, store a result."""

    def work() -> None:
        results = Celery("test-results", backend=env.settings.result_backend, set_as_current=False)
        with connect(env.settings) as connection, connection.channel() as channel:
            queue = work_queue(SEND_EMAIL, env.namespace, QueueOptions.of(env.settings)).bind(
                channel
            )
            queue.declare()
            message = eventually(
                lambda: queue.get(no_ack=True, accept=["json"]),
                timeout=20,
                message=f"a task in {queue.name}",
            )
            env.task_ids.append(message.headers["id"])
            store(results, message.headers["id"])

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_contracts_list_shows_every_contract(cli_env: CliEnv) -> None:
    output = run("contracts", "list").output

    assert "notifier.email.send" in output
    assert "notifier.im.send" in output
    # Queue names are shown as the workers use them: with the namespace.
    assert cli_env.q("notifier.email") in output
    assert "45s" in output  # the hard time limit column
    assert cli_env.q("notifier.email.dlq") in run("contracts", "list", "--wide").output


def test_invalid_payload_exits_2_naming_the_field(cli_env: CliEnv) -> None:
    result = run("submit", "notifier.email.send", "--json", '{"to": ["ada@example.com"]}', code=2)

    assert "subject" in result.output
    assert "Field required" in result.output
    assert depths() == expected_depths(cli_env)


def test_unknown_task_and_bad_json_exit_2(cli_env: CliEnv) -> None:
    assert (
        "unknown task 'no.such.task'"
        in run("submit", "no.such.task", "--json", "{}", code=2).output
    )
    typo = run("submit", "notifier.emial.send", "--json", GOOD, code=2).output
    assert "unknown task 'notifier.emial.send'; did you mean 'notifier.email.send'?" in typo
    assert "invalid JSON" in run("submit", "notifier.email.send", "--json", "{", code=2).output


def test_submit_to_a_broker_that_is_down_exits_1_with_one_line(
    cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scheme = "redis" if cli_env.kind == "redis" else "amqp"
    monkeypatch.setenv("TASKLANE_BROKER_URL", f"{scheme}://u:secret@127.0.0.1:{port}/")
    monkeypatch.setenv("TASKLANE_PUBLISH_TIMEOUT", "0.3")
    output = run("submit", "notifier.email.send", "--json", GOOD, code=1).output
    assert "unavailable" in output and "0.3s" in output
    assert "secret" not in output
    assert len(output.strip().splitlines()) == 1


def test_submit_publishes_one_task(cli_env: CliEnv) -> None:
    # Before anything is published the queues do not exist: they count as empty.
    assert depths() == expected_depths(cli_env)

    output = run("submit", "notifier.email.send", "--json", GOOD).output

    match = UUID.search(output)
    assert match is not None, output
    assert "PENDING" in output
    assert depths() == expected_depths(cli_env, notifier_email=1)
    [headers] = take_all(cli_env, SEND_EMAIL)
    assert headers["id"] == match.group(0)
    assert headers["task"] == "notifier.email.send"


def test_submit_file_publishes_in_bulk(cli_env: CliEnv, tmp_path: Path) -> None:
    lines = [
        '{"to": ["a@example.com"], "subject": "One", "text": "1"}',
        "",
        '{"to": ["b@example.com"], "subject": "Two", "text": "2"}',
        '{"to": ["c@example.com"], "subject": "Three", "template": "welcome"}',
    ]
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_text("\n".join(lines) + "\n")

    output = run("submit", "notifier.email.send", "--file", str(payloads)).output

    assert f"published 3 notifier.email.send tasks to {cli_env.q('notifier.email')}" in output
    assert depths() == expected_depths(cli_env, notifier_email=3)


def test_submit_file_sends_nothing_when_a_line_is_invalid(cli_env: CliEnv, tmp_path: Path) -> None:
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_text(
        '{"to": ["a@example.com"], "subject": "One", "text": "1"}\n{"to": ["b@example.com"]}\n'
    )

    output = run("submit", "notifier.email.send", "--file", str(payloads), code=2).output

    assert "line 2: subject: Field required" in output
    assert depths() == expected_depths(cli_env)


def test_submit_wait_prints_the_result(cli_env: CliEnv) -> None:
    def succeed(results: Celery, task_id: str) -> None:
        result = {"message_id": "<42@example.com>", "accepted": ["ada@example.com"]}
        results.backend.store_result(task_id, result, "SUCCESS")

    thread = answer_next_task(cli_env, succeed)
    output = run(
        "submit", "notifier.email.send", "--json", GOOD, "--wait", "--timeout", "20"
    ).output
    thread.join(5)

    lines = output.splitlines()
    assert UUID.fullmatch(lines[0].removeprefix("task id: "))
    # One state line, the final one: not PENDING first and SUCCESS after.
    assert [line for line in lines if line.startswith("state:")] == ["state: SUCCESS"]
    assert lines[1] == "state: SUCCESS"
    assert '"message_id": "<42@example.com>"' in output


def test_submit_wait_reports_a_failed_task_and_exits_1(cli_env: CliEnv) -> None:
    def fail(results: Celery, task_id: str) -> None:
        results.backend.store_result(task_id, PermanentError("mailbox unavailable"), "FAILURE")

    thread = answer_next_task(cli_env, fail)
    result = run("submit", "notifier.email.send", "--json", GOOD, "--wait", code=1)
    thread.join(5)

    assert "PermanentError: mailbox unavailable" in result.output


def test_submit_wait_times_out_with_exit_1(cli_env: CliEnv) -> None:
    result = run(
        "submit", "notifier.email.send", "--json", GOOD, "--wait", "--timeout", "0.5", code=1
    )

    assert "no result in 0.5s" in result.output


def test_worker_print_derives_the_service_queues(cli_env: CliEnv) -> None:
    output = run("worker", "notifier", "--print", "-c", "3", "--", "-O", "fair").output

    argv = shlex.split(output)
    assert argv[1:6] == ["-m", "celery", "-A", "notifier.app", "worker"]
    queues = argv[argv.index("-Q") + 1]
    assert queues == f"{cli_env.q('notifier.email')},{cli_env.q('notifier.im')}"
    assert argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("--pool") + 1] == "prefork"
    assert argv[-2:] == ["-O", "fair"]


def test_worker_of_unknown_service_lists_the_known_ones(cli_env: CliEnv) -> None:
    output = run("worker", "billing", "--print", code=2).output

    assert "unknown service 'billing'" in output
    assert "known services: media, notifier, scraper" in output


def test_dlq_list_show_replay_purge(cli_env: CliEnv) -> None:
    first = dead_letter(cli_env, "First", "451 try again later")
    second = dead_letter(cli_env, "Second", "421 too busy " + "x" * 200)
    assert depths() == expected_depths(cli_env, notifier_email_dlq=2)

    listed = run("dlq", "list").output
    assert listed.count("retries-exhausted") == 2
    assert "x" * 200 not in listed  # errors are truncated in the table
    wide = run("dlq", "list", "--wide").output
    assert first in wide and second in wide

    shown = run("dlq", "show", "notifier.email", "--index", "1").output
    assert second in shown
    assert '"subject": "Second"' in shown
    assert "x" * 200 in shown  # the full error in the detail view
    assert run("dlq", "show", "notifier.email", "--index", "5", code=2).output
    # Peeking must leave the dead letters where they were.
    assert depths() == expected_depths(cli_env, notifier_email_dlq=2)

    replayed = run("dlq", "replay", cli_env.q("notifier.email.dlq"), "--limit", "1").output
    assert f"replayed 1 dead letters from {cli_env.q('notifier.email.dlq')}" in replayed
    assert depths() == expected_depths(cli_env, notifier_email=1, notifier_email_dlq=1)
    [headers] = take_all(cli_env, SEND_EMAIL)
    assert headers["id"] == first  # oldest first
    assert REASON not in headers
    assert headers["retries"] == 0

    run("dlq", "purge", "notifier.email.dlq", input="n\n", code=1)
    assert depths() == expected_depths(cli_env, notifier_email_dlq=1)

    purged = run("dlq", "purge", "notifier.email.dlq", "--yes").output
    assert "purged 1 dead letters" in purged
    assert depths() == expected_depths(cli_env)
    assert "no dead letters" in run("dlq", "list", "notifier.email").output


def test_dlq_of_unknown_queue_exits_2(cli_env: CliEnv) -> None:
    output = run("dlq", "list", "billing.invoices", code=2).output

    assert "unknown queue 'billing.invoices'" in output
    assert cli_env.q("notifier.email.dlq") in output
