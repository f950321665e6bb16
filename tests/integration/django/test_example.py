"""The Django quick start (examples/django_quickstart): ``make demo-django`` end to end (with
Beat and Flower beside the worker), the project's own tests, its migrations and its Beat
schedule."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.django.example_support import EXAMPLE, manage

# The demo starts a broker, a worker, Beat, Flower and a relay, each a Python process, on two
# busy cores.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TASK_ID = "[0-9a-f-]{36}"


def test_make_demo_django_delivers_an_order_and_a_beat_firing_that_flower_shows() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "demo.py")],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        env={**os.environ, "PGDATABASE": "not-used", "DJANGO_SETTINGS_MODULE": "not.used"},
    )
    out = done.stdout
    assert done.returncode == 0, f"demo exited {done.returncode}:\n{out}\n{done.stderr}"

    assert "broker: embedded Valkey at redis://127.0.0.1:" in out
    assert "beat: tasklane beat running, the active Beat (holds the lock)" in out
    assert re.search(r"flower: http://127\.0\.0\.1:\d+ \(basic auth ops:…\), running\n", out)
    worker = re.search(
        r"/api/workers: (notifier@\S+), queues quickstart\.notifier\.email, "
        r"quickstart\.notifier\.im\n",
        out,
    )
    assert worker, out
    assert f"{worker[1]}: task events enabled by Flower" in out
    assert re.search(r"database: SQLite at \S+db\.sqlite3, migrated", out)
    assert "system check tasklane.W001: the outbox database 'default' is not PostgreSQL" in out
    created = re.search(
        rf"POST /orders/ .* -> 201 .*'notifier\.im\.send': '({TASK_ID})', "
        rf"'notifier\.email\.send': '({TASK_ID})'",
        out,
    )
    assert created, out
    robot, email = created.groups()
    assert "-> 400 {'errors': {'customer_email': ['Enter a valid email address.']}}" in out
    before, after = out.split("outbox, after the relay ran:")
    for task_id, contract in ((robot, r"notifier\.im\.send"), (email, r"notifier\.email\.send")):
        row = rf"outbox row \d+: {contract} +task {task_id}"
        assert re.search(rf"{row}  pending  attempts 0\n", before), before
        assert re.search(rf"{row}  sent  attempts 0  sent_at ", after), after
    assert "admin /admin/tasklane/outboxmessage/ -> 200, lists both rows" in out
    assert "Subject: Order 1 confirmed" in out
    assert "Thank you for your order 1: 2 x Blue kettle." in out
    assert '"title":"New order 1"' in out
    assert "DingTalk signature verified" in out

    # A one-off added through the admin's form: Beat fires it, the notifier delivers it signed.
    assert re.search(
        r"admin: add schedule 'orders-to-ship', notifier\.im\.send once at [\d:]{8} UTC -> 302\n",
        out,
    )
    assert "audit trail: created by admin (admin)" in out
    ordered, fired = out.split("DingTalk stand-in received from Beat's firing")
    assert ordered.count("DingTalk signature verified") == 1
    assert '"title":"Orders to ship"' in fired and "DingTalk signature verified" in fired
    history = re.search(
        rf"run history of 'orders-to-ship' \(Schedules\.history\):\n"
        rf"  fired [\d:.]+ slot [\d:]+  task ({TASK_ID})  succeeded\n"
        rf"  runs 1, enabled False",
        out,
    )
    assert history, out
    beat_task = history[1]
    assert f"published notifier.im.send[{beat_task}]" in out

    # Flower saw every task through the worker's task events.
    shown = out.split("flower /api/tasks (from the worker's task events):")[1]
    for task_id, contract in (
        (robot, r"notifier\.im\.send"),
        (email, r"notifier\.email\.send"),
        (beat_task, r"notifier\.im\.send"),
    ):
        assert re.search(rf"{task_id}  {contract} +SUCCESS  on {worker[1]}  runtime ", shown)

    for process in ("relay", "flower"):
        assert f"{process} stopped on SIGTERM: exit 0\n" in out
    assert "beat stopped on SIGTERM: exit 0, 0 Beat left in Redis" in out
    assert out.rstrip().endswith("demo finished: everything shut down")


def test_the_quick_starts_own_tests_pass_with_the_test_helper(tmp_path: Path) -> None:
    output = manage("test", "shop", "--verbosity", "2", env=sqlite(tmp_path))
    for test in (
        "test_an_order_tells_the_robot_and_emails_the_customer",
        "test_an_invalid_order_is_refused_and_publishes_nothing",
    ):
        assert re.search(rf"{test} \(shop\.tests\.[\w.]+\) \.\.\. ok", output), output
    assert re.search(r"Ran 2 tests in .*\n\nOK", output), output


def test_the_quick_starts_migrations_match_its_models(tmp_path: Path) -> None:
    output = manage("makemigrations", "--check", "--dry-run", env=sqlite(tmp_path))
    assert "No changes detected" in output


def test_the_quick_starts_beat_schedule_loads_with_every_payload_valid() -> None:
    from tasklane.beat.sources import entries_from_file

    entries, problems = entries_from_file(EXAMPLE / "schedules.yaml")
    assert problems == {}
    assert [(entry.name, entry.task) for entry in entries] == [
        ("morning-orders-reminder", "notifier.im.send")
    ]
    assert entries[0].payload["secret_ref"] == "dingtalk-orders"


def sqlite(directory: Path) -> dict[str, str]:
    """The quick start on a SQLite file of this test's, whatever the shell says."""
    return {"PGDATABASE": "", "QUICKSTART_SQLITE": str(directory / "db.sqlite3")}
