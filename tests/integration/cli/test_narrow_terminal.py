"""``dlq list``, ``contracts list`` and ``schedule list`` at 80 columns, ``--wide`` and ``--json``.

The real ``tasklane`` command runs in a subprocess with ``COLUMNS=80``, as in an operator's
terminal, against real Redis holding real dead letters and schedules.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasklane.contracts import REGISTRY, SEND_EMAIL
from tasklane.wire.routing import dlq_name, queue_name
from tests.support.harness import BrokerEnv, dead_letter_email

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
#: ``12-04 14:03:11``: month-day and time, UTC.
COMPACT_TIME = re.compile(r"\b\d\d-\d\d \d\d:\d\d:\d\d\b")
LONG_ERROR = "421 too busy, try again in a while " + "x" * 200


@pytest.fixture
def env(redis_broker: BrokerEnv) -> Iterator[BrokerEnv]:
    yield redis_broker


def tasklane(broker: BrokerEnv, *args: str, columns: int = 80) -> str:
    """``tasklane ARGS`` in a terminal of ``columns``; its stdout (exit status 0 asserted)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKLANE_")}
    environment |= broker.env() | {"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm"}
    environment.pop("FORCE_COLOR", None)
    done = subprocess.run(
        [TASKLANE, *args], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def assert_fits(output: str, columns: int = 80) -> None:
    too_long = [line for line in output.splitlines() if len(line.rstrip()) > columns]
    assert not too_long, "\n".join(too_long)


def dead_letter(broker: BrokerEnv, error: str) -> str:
    """One email task in the email DLQ, as a worker leaves it after its last retry; its id."""
    return dead_letter_email(broker.settings, error)


def rows(output: str) -> list[list[str]]:
    """A compact table's lines split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines() if line.strip()]


def test_dlq_list_at_80_columns_shows_index_task_reason_error_time_and_attempts(
    env: BrokerEnv,
) -> None:
    dead_letter(env, "451 try again later")
    dead_letter(env, LONG_ERROR)

    output = tasklane(env, "dlq", "list")

    assert_fits(output)
    email_dlq = dlq_name(queue_name(SEND_EMAIL, env.namespace))
    assert f"{email_dlq}: 2 of 2, oldest first" in output
    table = rows(output)
    header = next(row for row in table if row[0] == "#")
    assert header == ["#", "Task / error", "Reason", "Failed (UTC)", "Tries"]
    letters = [row for row in table if row[0] in {"0", "1"}]
    assert [row[0] for row in letters] == ["0", "1"]
    for row in letters:
        assert row[1:3] == ["notifier.email.send", "retries-exhausted"]
        assert COMPACT_TIME.fullmatch(row[3]), row
        assert row[4] == "9"
    # The error, on the lines under its task (wrapped at words), readable and cut short.
    flat = " ".join(output.split())
    assert "notifier.email.send retries-exhausted" in flat
    assert "TransientError: 451 try again later" in flat
    assert "TransientError: 421 too busy, try again in a while" in flat
    assert "x" * 80 not in flat


def test_dlq_list_wide_shows_every_column_and_the_full_ids(env: BrokerEnv) -> None:
    ids = [dead_letter(env, "451 try again later"), dead_letter(env, "550 no")]

    output = tasklane(env, "dlq", "list", "notifier.email", "--wide", columns=250)

    header = next(line for line in output.splitlines() if "Error type" in line)
    for column in ("DLQ", "#", "Task", "Id", "Reason", "Error type", "Error", "Attempts"):
        assert column in header
    assert "Failed at" in header
    assert all(task_id in output for task_id in ids)


def test_dlq_list_wide_at_80_columns_shows_every_field_as_records(env: BrokerEnv) -> None:
    ids = [dead_letter(env, "451 try again later"), dead_letter(env, "550 no")]

    output = tasklane(env, "dlq", "list", "--wide")

    assert_fits(output)
    records = [block for block in output.split("\n\n") if "Error type" in block]
    assert len(records) == 2
    for index, (record, task_id) in enumerate(zip(records, ids, strict=True)):
        fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in record.splitlines()
                      if line.strip() and line.strip() != "Dead letters")  # fmt: skip
        assert fields["#"] == str(index)
        assert fields["Id"] == task_id
        assert fields["Task"] == "notifier.email.send"
        assert fields["Error type"] == "TransientError"
        assert fields["Attempts"] == "9"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", fields["Failed at"])
        assert set(fields) == {
            "DLQ", "#", "Task", "Id", "Reason", "Error type", "Error", "Attempts", "Failed at"
        }  # fmt: skip


def test_dlq_list_json_carries_every_field_of_every_letter(env: BrokerEnv) -> None:
    first = dead_letter(env, LONG_ERROR)

    document = json.loads(tasklane(env, "dlq", "list", "--json"))

    [queue] = document["dead_letters"]  # only DLQs holding letters, unless one is named
    assert queue["dlq"] == dlq_name(queue_name(SEND_EMAIL, env.namespace))
    assert queue["depth"] == 1
    [letter] = queue["letters"]
    assert letter == {
        "index": 0,
        "task": "notifier.email.send",
        "id": first,
        "queue": queue_name(SEND_EMAIL, env.namespace),
        "reason": "retries-exhausted",
        "error_type": "TransientError",
        "error": LONG_ERROR,  # whole, unlike the table's preview
        "attempts": 9,
        "failed_at": letter["failed_at"],
        "published_at": letter["published_at"],
    }
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", letter["failed_at"])


def test_contracts_list_at_80_columns_shows_task_queue_priority_retries_and_limit(
    env: BrokerEnv,
) -> None:
    output = tasklane(env, "contracts", "list")

    assert_fits(output)
    table = {row[0]: row for row in rows(output)}
    assert table["Task"] == ["Task", "Queue", "Prio", "Retries", "Limit"]
    for contract in REGISTRY:
        assert table[contract.name] == [
            contract.name,
            queue_name(contract, env.namespace),
            str(contract.priority),
            str(contract.retry.max_retries),
            f"{contract.time_limit:g}s",
        ]


def test_contracts_list_wide_and_json_show_every_policy(env: BrokerEnv) -> None:
    wide = tasklane(env, "contracts", "list", "--wide", columns=250)
    header = next(line for line in wide.splitlines() if "Idempotency key" in line)
    for column in ("Task", "Queue", "DLQ", "Priority", "Soft / hard limit", "Rate limit"):
        assert column in header
    assert "Retries" in header
    assert dlq_name(queue_name(SEND_EMAIL, env.namespace)) in wide

    document = json.loads(tasklane(env, "contracts", "list", "--json"))
    by_task = {entry["task"]: entry for entry in document["contracts"]}
    assert sorted(by_task) == sorted(contract.name for contract in REGISTRY)
    assert by_task[SEND_EMAIL.name] == {
        "task": "notifier.email.send",
        "service": "notifier",
        "queue": queue_name(SEND_EMAIL, env.namespace),
        "dlq": dlq_name(queue_name(SEND_EMAIL, env.namespace)),
        "priority": SEND_EMAIL.priority,
        "soft_time_limit": SEND_EMAIL.soft_time_limit,
        "time_limit": SEND_EMAIL.time_limit,
        "rate_limit": SEND_EMAIL.rate_limit,
        "max_retries": SEND_EMAIL.retry.max_retries,
        "idempotency_key": list(SEND_EMAIL.idempotency_key),
    }


def add_schedules(env: BrokerEnv) -> None:
    payload = '{"to": ["ops@example.com"], "subject": "daily", "text": "report"}'
    tasklane(env, "schedule", "add", "daily-ops-mail", "--task", "notifier.email.send",
             "--json", payload, "--cron", "0 3 * * *", "--tz", "Europe/Berlin")  # fmt: skip
    tasklane(env, "schedule", "add", "ping-email", "--task", "notifier.email.ping",
             "--json", "{}", "--every", "300", "--disabled")  # fmt: skip


def test_schedule_list_at_80_columns_shows_name_task_schedule_enabled_and_next_run(
    env: BrokerEnv,
) -> None:
    add_schedules(env)

    output = tasklane(env, "schedule", "list")

    assert_fits(output)
    assert "202…" not in output
    table = {row[0]: row for row in rows(output)}
    assert table["Name"] == ["Name", "Task", "Schedule", "On", "Next run (UTC)"]
    daily = table["daily-ops-mail"]
    assert daily[1:4] == ["notifier.email.send", "cron 0 3 * * *", "yes"]
    assert COMPACT_TIME.fullmatch(daily[4]), daily
    assert "Europe/Berlin" in output  # the time zone, on the schedule's second line
    ping = table["ping-email"]
    assert ping[1:4] == ["notifier.email.ping", "every 5m", "no"]


def test_schedule_list_wide_and_json_show_every_field(env: BrokerEnv) -> None:
    add_schedules(env)

    wide = tasklane(env, "schedule", "list", "--wide", columns=250)
    header = next(line for line in wide.splitlines() if "Last run" in line)
    for column in ("Name", "Task", "Schedule", "Enabled", "Source", "Runs", "Next run"):
        assert column in header
    assert "Problem" in header
    # Full ISO 8601 times with their offset.
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", wide)

    document: dict[str, Any] = json.loads(tasklane(env, "schedule", "list", "--json"))
    views = {view["entry"]["name"]: view for view in document["schedules"]}
    assert sorted(views) == ["daily-ops-mail", "ping-email"]
    daily = views["daily-ops-mail"]
    assert daily["entry"]["task"] == "notifier.email.send"
    assert daily["entry"]["schedule"]["timezone"] == "Europe/Berlin"
    assert daily["entry"]["enabled"] is True
    assert daily["entry"]["source"] == "api"
    assert daily["state"]["total_run_count"] == 0
    assert daily["state"]["last_run_at"] is None
    assert daily["next_run_at"].startswith("20")
    assert daily["problem"] is None
    assert views["ping-email"]["entry"]["enabled"] is False
