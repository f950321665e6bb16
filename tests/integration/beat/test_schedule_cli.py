"""``tasklane schedule`` against real Redis: entries, run-now onto the real queue, Beat status."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from typer.testing import CliRunner, Result

from tasklane.beat.client import Schedules
from tasklane.beat.models import IntervalSchedule, ScheduleEntry
from tasklane.beat.store import BeatStatus
from tasklane.cli.main import app
from tasklane.contracts import SEND_IM
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.headers import SCHEDULE
from tasklane.wire.routing import queue_name
from tests.support.harness import BrokerEnv, cleanup

UUID = re.compile(r"task id: ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
PAYLOAD = '{"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}'


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[BrokerEnv]:
    """The CLI's environment: Redis as broker and schedule store, in a namespace of its own."""
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    for name, value in broker.env().items():
        monkeypatch.setenv(name, value)
    # Wide, colourless output so tables are never wrapped or interleaved with escape codes.
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    yield broker
    cleanup(broker)


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, ["schedule", *args])
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def add(name: str, *options: str, task: str = SEND_IM.name, payload: str = PAYLOAD) -> str:
    return run("add", name, "--task", task, "--json", payload, *options).output


def fails(*args: str) -> str:
    """The one-line error of a command that must exit 2."""
    output = run(*args, code=2).output
    assert output.startswith("error: "), output
    return output


def rows() -> dict[str, list[str]]:
    """``tasklane schedule list --wide`` parsed (every column): entry name to its cells."""
    found: dict[str, list[str]] = {}
    for line in run("list", "--wide").output.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]
        if len(cells) == 9 and cells[0] != "Name":
            found[cells[0]] = cells
    return found


def show(name: str) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(run("show", name).output)
    return view


def test_add_list_show_disable_enable_remove(env: BrokerEnv) -> None:
    assert run("list").output.strip() == "no schedules"
    at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)

    assert "added ping: notifier.im.send every 5m; next run " in add("ping", "--every", "300")
    add("nightly", "--cron", "30 3 * * mon-fri", "--tz", "Europe/Berlin", "--description", "n")
    assert "added (disabled) once" in add("once", "--at", at.isoformat(), "--disabled")

    table = rows()
    assert sorted(table) == ["nightly", "once", "ping"]
    assert table["ping"][1:6] == ["notifier.im.send", "every 5m", "yes", "api", "0"]
    assert table["nightly"][2] == "cron 30 3 * * mon-fri Europe/Berlin"
    assert table["once"][2:4] == [f"once at {at.isoformat()}", "no"]
    assert table["once"][6:9] == ["-", "-", "-"]  # never ran, disabled, no problem

    view = show("nightly")
    entry = view["entry"]
    assert [entry[key] for key in ("name", "task", "description", "source", "enabled")] == [
        "nightly", SEND_IM.name, "n", "api", True
    ]  # fmt: skip
    assert entry["schedule"] == {
        "kind": "crontab", "minute": "30", "hour": "3", "day_of_month": "*",
        "month_of_year": "*", "day_of_week": "mon-fri", "timezone": "Europe/Berlin",
    }  # fmt: skip
    assert entry["payload"]["url"] == "https://hooks.example.org/x"
    assert view["state"]["total_run_count"] == 0
    assert view["next_run_at"] is not None

    assert run("disable", "ping").output.strip() == "disabled ping"
    assert rows()["ping"][3] == "no"
    assert show("ping")["next_run_at"] is None
    assert "enabled ping; next run " in run("enable", "ping").output
    assert rows()["ping"][3] == "yes"

    assert run("remove", "ping").output.strip() == "removed ping"
    assert "no schedule 'ping'" in fails("show", "ping")
    assert "no schedule 'ping'" in fails("remove", "ping")
    assert sorted(rows()) == ["nightly", "once"]


def test_run_now_prints_the_task_id_and_publishes_it(env: BrokerEnv, redis_url: str) -> None:
    add("ping", "--every", "3600")

    output = run("run-now", "ping").output

    match = UUID.search(output)
    assert match is not None, output
    client = redis.Redis.from_url(redis_url)
    try:
        keys = redis_queue_keys(queue_name(SEND_IM, env.namespace))
        [raw] = [message for key in keys for message in client.lrange(key, 0, -1)]
    finally:
        client.close()
    headers = json.loads(raw)["headers"]
    assert headers["id"] == match.group(1)
    assert headers[SCHEDULE] == "ping"
    assert rows()["ping"][5] == "1"
    assert "no schedule 'nope'" in fails("run-now", "nope")


def test_an_invalid_payload_names_the_field_and_stores_nothing(env: BrokerEnv) -> None:
    output = fails(
        "add", "ping", "--task", SEND_IM.name, "--json", '{"channel": "fax", "text": "hi"}',
        "--every", "60",
    )  # fmt: skip

    assert "invalid payload for notifier.im.send" in output
    assert "channel: Input should be 'dingtalk', 'slack' or 'webhook'" in output
    assert "url: Field required" in output
    assert run("list").output.strip() == "no schedules"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--every", "60", "--cron", "* * * * *"], "exactly one of --every, --cron and --at"),
        ([], "exactly one of --every, --cron and --at (got none)"),
        (["--every", "0"], "--every: Input should be greater than 0"),
        (["--every", "60", "--tz", "UTC"], "--tz applies to --cron only"),
        (["--cron", "61 * * * *"], "--cron: minute: 61 is out of range 0-59"),
        (["--cron", "0 3 * *"], "--cron: expected 5 fields"),
        (["--cron", "0 3 * * xyz"], "day_of_week: 'xyz' is not a value"),
        (["--cron", "0 3 * * *", "--tz", "Mars/Olympus"], "--tz: unknown time zone"),
        (["--at", "2030-01-01T09:00:00"], "--at: must carry a time zone offset"),
        (["--at", "tomorrow"], "--at: 'tomorrow' is not an ISO 8601 date-time"),
        (["--every", "60", "--start", "2030-01-01"], "--start: must carry a time"),
        (["--every", "60", "--expires", "soon"], "--expires: 'soon' is not an ISO 8601"),
    ],
)
def test_bad_schedule_options_name_the_option(
    env: BrokerEnv, options: list[str], message: str
) -> None:
    output = fails("add", "ping", "--task", SEND_IM.name, "--json", PAYLOAD, *options)

    assert message in output


@pytest.mark.parametrize(
    ("name", "task", "payload", "message"),
    [
        ("ping", "no.such.task", PAYLOAD, "unknown task 'no.such.task'"),
        ("ping", SEND_IM.name, "[1]", "--json: the payload must be a JSON object"),
        ("ping", SEND_IM.name, "{", "--json: invalid JSON"),
        ("bad name!", SEND_IM.name, PAYLOAD, "NAME: String should match pattern"),
    ],
)
def test_bad_entries_name_what_is_wrong(
    env: BrokerEnv, name: str, task: str, payload: str, message: str
) -> None:
    output = fails("add", name, "--task", task, "--json", payload, "--every", "60")

    assert message in output


def test_a_taken_name_needs_replace(env: BrokerEnv) -> None:
    add("ping", "--every", "60")

    assert "schedule 'ping' exists already" in fails(
        "add", "ping", "--task", SEND_IM.name, "--json", PAYLOAD, "--every", "120"
    )
    add("ping", "--every", "120", "--replace")

    assert rows()["ping"][2] == "every 2m"


def test_entries_of_a_schedule_file_are_removed_there(env: BrokerEnv) -> None:
    every_minute = IntervalSchedule(every=60)
    entry = ScheduleEntry(
        name="from-file", task=SEND_IM.name, payload=json.loads(PAYLOAD), schedule=every_minute
    )
    with Schedules(env.settings) as schedules:
        schedules.store.sync_source("file", [entry.validated()])

    assert rows()["from-file"][4] == "file"
    assert "managed by file; remove it there" in fails("remove", "from-file")
    run("disable", "from-file")  # allowed whatever manages it
    assert rows()["from-file"][3] == "no"


def test_beats_shows_live_beat_processes(env: BrokerEnv) -> None:
    assert run("beats").output.strip() == "no Beat process is running"
    with Schedules(env.settings) as schedules:
        for process, holds in (("host:1:aaa", True), ("host:2:bbb", False)):
            status = BeatStatus(
                process=process,
                last_tick=datetime.now(UTC) - timedelta(seconds=2),
                schedules=4,
                holds_lock=holds,
                problems={"broken": "unknown task contract 'x'"} if not holds else {},
            )
            schedules.store.report(status, ttl=30)

    output = run("beats").output

    lines = {line.split("│")[1].strip(): line for line in output.splitlines() if "host:" in line}
    active = re.search(
        r"host:1:aaa\s+│\s+(\d+\.\d)s ago\s+│\s+4\s+│\s+yes\s+│\s+-", lines["host:1:aaa"]
    )
    assert active is not None, lines["host:1:aaa"]
    # Reported 2 s before the command ran; how long the command took to start depends on the load.
    assert 2.0 <= float(active.group(1)) < 60, lines["host:1:aaa"]
    assert re.search(r"│\s+no\s+│\s+broken", lines["host:2:bbb"])


def test_edit_keeps_history_and_the_audit_names_the_cli_user(env: BrokerEnv) -> None:
    add("report", "--every", "60")
    task_id = UUID.search(run("run-now", "report").output)
    assert task_id is not None

    output = run(
        "edit", "report", "--cron", "0 7 * * *", "--tz", "Europe/Berlin", "--priority", "8"
    )

    assert "changed report (priority, schedule)" in output.output
    view = show("report")
    assert view["entry"]["schedule"]["timezone"] == "Europe/Berlin"
    assert view["entry"]["priority"] == 8 and view["state"]["total_run_count"] == 1
    assert task_id.group(1) in run("history", "report").output
    trail = run("audit", "report").output
    assert [line.split("│")[3].strip() for line in trail.splitlines() if "│ report" in line] == [
        "changed",
        "ran",
        "created",
    ]
    assert "(cli)" in trail
    run("edit", "report", "--clear", "priority")
    assert show("report")["entry"]["priority"] is None


def test_edit_errors_name_the_option(env: BrokerEnv) -> None:
    add("report", "--every", "60")
    assert "nothing to change" in fails("edit", "report")
    assert "--clear: 'name'" in fails("edit", "report", "--clear", "name")
    assert "expires_at" in fails("edit", "report", "--expires", "2020-01-01T00:00:00+00:00")
    assert "--priority" in fails("edit", "report", "--priority", "12")
    assert "no schedule 'missing'" in fails("edit", "missing", "--every", "5")
    assert show("report")["entry"]["schedule"]["every"] == 60
