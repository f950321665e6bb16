"""``tasklane``'s help shows flags as flags; its errors name what to set or the task meant."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tasklane.cli.errors import unknown_task
from tasklane.cli.main import app
from tasklane.cli.tables import compact_time

#: A RabbitMQ URL nothing listens on: commands must stop before they would connect.
AMQP = "amqp://guest:guest@127.0.0.1:1//"
NO_BROKER = "error: no broker configured: set TASKLANE_BROKER_URL (or REDIS_URL)"


@pytest.fixture(autouse=True)
def _terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")


def run(*args: str, code: int) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    return result


def option_line(help_text: str, option: str) -> str:
    """The row of ``option`` in the help's option table."""
    return next(line for line in help_text.splitlines() if re.match(rf"│\s+{option}\b", line))


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["dlq", "purge"], ["--yes"]),
        (["dlq", "list"], ["--wide", "--json"]),
        (["dlq", "show"], ["--json"]),
        (["submit"], ["--wait"]),
        (["result"], ["--wait", "--json"]),
        (["contracts", "list"], ["--wide", "--json"]),
        (["schedule", "list"], ["--wide", "--json"]),
        (["schedule", "add"], ["--disabled", "--replace"]),
        (["worker"], ["--print"]),
        ([], []),
        (["schedule"], []),
        (["gateway"], []),
    ],
)
def test_help_shows_flags_without_a_value_type(command: list[str], flags: list[str]) -> None:
    output = run(*command, "--help", code=0).output

    assert "<bool>" not in output
    for flag in [*flags, "--help"]:
        line = option_line(output, flag)
        assert "<" not in line.split(flag, 1)[1].split("  ")[0], line


def test_help_still_shows_the_type_of_options_that_take_a_value() -> None:
    output = run("submit", "--help", code=0).output

    assert "<float" in option_line(output, "--timeout")
    assert "<str>" in option_line(output, "--json")


def test_a_flag_refuses_a_value_and_takes_none() -> None:
    # `--yes true` is an extra argument: --yes is a flag, as its help now shows.
    assert "unexpected extra argument" in run("dlq", "purge", "q", "--yes", "true", code=2).output


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "notifier.emial.send", "--json", "{}"],
        ["schedule", "add", "n", "--task", "notifier.emial.send", "--json", "{}", "--every", "60"],
        ["contracts", "export", "notifier.emial.send"],
    ],
)
def test_an_unknown_task_name_suggests_the_closest_and_exits_2(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ["--out", str(tmp_path)] if args[0] == "contracts" else []
    # The name is checked before anything connects: nothing listens at this address.
    monkeypatch.setenv("TASKLANE_BROKER_URL", "redis://127.0.0.1:1/0")

    output = run(*args, *out, code=2).output

    assert output.strip() == (
        "error: unknown task 'notifier.emial.send'; did you mean 'notifier.email.send'?"
    )
    assert not list(tmp_path.iterdir())  # export wrote nothing


def test_an_unknown_task_far_from_every_name_points_to_contracts_list() -> None:
    assert unknown_task("billing.invoice.issue") == (
        "unknown task 'billing.invoice.issue'; `tasklane contracts list` shows the known tasks"
    )


def test_contracts_export_of_named_tasks_writes_only_theirs(tmp_path: Path) -> None:
    run("contracts", "export", "notifier.im.send", "--out", str(tmp_path), code=0)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notifier.im.send.json",
        "notifier.im.send.result.json",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["schedule", "list"],
        ["schedule", "add", "n", "--task", "notifier.email.ping", "--json", "{}", "--every", "60"],
        ["beat", "--print"],
        ["beat-health"],
        ["result", "some-id"],
        ["queues"],
        ["dlq", "list"],
    ],
)
def test_with_no_broker_every_command_asks_for_the_broker(args: list[str]) -> None:
    assert run(*args, code=2).output.strip() == NO_BROKER


@pytest.mark.parametrize(
    "args",
    [["schedule", "list"], ["beat", "--print"], ["beat-health"]],
)
def test_schedules_on_a_rabbitmq_broker_ask_for_their_redis(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", AMQP)

    assert run(*args, code=2).output.strip() == (
        "error: schedules need Redis and the broker is amqp://, not Redis: "
        "set TASKLANE_STATE_URL (or TASKLANE_RESULT_BACKEND)"
    )


@pytest.mark.parametrize(
    "args",
    [["result", "some-id"], ["submit", "notifier.email.ping", "--json", "{}", "--wait"]],
)
def test_results_on_a_rabbitmq_broker_ask_for_the_result_backend(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", AMQP)

    # Stops before publishing: nothing listens at AMQP, so a connection would say "unavailable".
    assert run(*args, code=2).output.strip() == (
        "error: task results need Redis and the broker is amqp://, not Redis: "
        "set TASKLANE_RESULT_BACKEND"
    )


NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (datetime(2026, 12, 4, 14, 3, 11, tzinfo=UTC), "12-04 14:03:11"),
        ("2026-12-04T14:03:11.431736+00:00", "12-04 14:03:11"),
        (datetime(2026, 12, 4, 15, 3, 11, tzinfo=timezone(timedelta(hours=1))), "12-04 14:03:11"),
        ("2026-12-04T14:03:11", "12-04 14:03:11"),  # naive: UTC
        ("2025-12-31T23:59:59+00:00", "2025-12-31 23:59"),  # another year: the year shown
        (None, "-"),
        ("", "-"),
        ("yesterday", "yesterday"),  # not ISO 8601: shown as it is
    ],
)
def test_compact_time_is_utc_month_day_and_time(value: datetime | str | None, shown: str) -> None:
    assert compact_time(value, now=NOW) == shown
