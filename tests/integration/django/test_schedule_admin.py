"""Beat's schedules in Django's admin, through the test client: real Redis, real permissions.

Every test has a namespace of its own in Redis (Beat's store) and users of its own in PostgreSQL.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core import checks
from django.test import Client

from tasklane.beat.client import Schedules
from tasklane.beat.models import (
    Actor,
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    ScheduleEntry,
)
from tasklane.contracts import REGISTRY
from tests.support import eventually
from tests.support.flaky_contracts import FLAKY_REGISTRY
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup

pytestmark = pytest.mark.integration

ADMIN = "/admin/tasklane/schedule/"
EMAIL = {"to": ["ops@example.com"], "subject": "Digest", "text": "the day's digest"}
IM = {"channel": "webhook", "url": "https://hooks.example.org/beat", "text": "tick"}


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def env(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis as broker, result backend and Beat's store, in a namespace of this test's own."""
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield broker
    cleanup(broker)


@pytest.fixture
def schedules(env: BrokerEnv, tasklane_setting: Callable[..., None]) -> Iterator[Schedules]:
    """The admin pointed at the test's namespace, and a ``Schedules`` of the test's own."""
    tasklane_setting(
        BROKER_URL=env.broker_url, RESULT_BACKEND=env.result_backend, NAMESPACE=env.namespace
    )
    with Schedules(env.settings) as managed:
        yield managed


@pytest.fixture
def login(django_project: str) -> Iterator[Callable[..., Client]]:
    """A client logged in as a new staff user with the given permissions (``view_schedule``)."""
    made: list[User] = []

    def log_in(*codenames: str, superuser: bool = False) -> Client:
        name = f"{'root' if superuser else 'staff'}-{uuid.uuid4().hex[:8]}"
        user = User.objects.create_user(
            name, f"{name}@example.com", "pw", is_staff=True, is_superuser=superuser
        )
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="tasklane", codename__in=codenames)
        )
        made.append(user)
        client = Client()
        client.force_login(user)
        return client

    yield log_in
    for user in made:
        user.delete()


def email_entry(name: str, **fields: Any) -> ScheduleEntry:
    fields.setdefault("schedule", CrontabSchedule(minute="0", hour="8", timezone="Europe/Berlin"))
    return ScheduleEntry(name=name, task="notifier.email.send", payload=EMAIL, **fields)


def im_entry(name: str, every: float = 300, **fields: Any) -> ScheduleEntry:
    return ScheduleEntry(
        name=name,
        task="notifier.im.send",
        payload=IM,
        schedule=IntervalSchedule(every=every),
        **fields,
    )


def listed(page: Any) -> list[str]:
    """The names in a list page's rows, in order."""
    return re.findall(r'<tr data-schedule="([^"]+)"', page.content.decode())


def form(**changes: Any) -> dict[str, Any]:
    """The add form as a browser posts it: an interval entry of the IM contract."""
    data: dict[str, Any] = {
        "name": "heartbeat",
        "task": "notifier.im.send",
        "payload": json.dumps(IM),
        "description": "",
        "enabled": "on",
        "kind": "interval",
        "timezone": "UTC",
        "every": "30",
        **dict.fromkeys(("minute", "hour", "day_of_month", "month_of_year", "day_of_week"), "*"),
        **dict.fromkeys(("at", "start_at", "expires_at", "priority", "expires_after"), ""),
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def field_errors(page: Any, field: str) -> list[str]:
    """The errors the page shows on ``field``: the list Django's form renders for that field
    (``id="id_<field>_error"``, which the field's input refers to)."""
    found = re.search(
        rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', page.content.decode(), re.S
    )
    if found is None:
        return []
    items = re.findall(r"<li>(.*?)</li>", found.group(1), re.S)
    return [unescape(re.sub(r"<[^>]+>", "", item)) for item in items]


class _FormValues(HTMLParser):
    """What a browser would submit from a page's form: inputs, checked boxes, textareas and
    selected options (disabled fields are not submitted)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        name = attr.get("name")
        if "disabled" in attr:
            return
        if tag == "input" and name and attr.get("type") not in ("submit", "hidden", "checkbox"):
            self.values[name] = attr.get("value") or ""
        elif tag == "input" and name and attr.get("type") == "checkbox" and "checked" in attr:
            self.values[name] = "on"
        elif tag == "textarea" and name:
            self._textarea = name
            self.values[name] = ""
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select and "selected" in attr:
            self.values[self._select] = attr.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            # Django starts a textarea's content with a newline, which browsers drop.
            self.values[self._textarea] += (
                data.removeprefix("\n") if not self.values[self._textarea] else data
            )


def form_values(page: Any) -> dict[str, str]:
    parser = _FormValues()
    parser.feed(page.content.decode())
    return parser.values


# ------------------------------------------------------------------------------- the list


def test_the_list_shows_each_entry_and_filters_and_searches(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    schedules.add(email_entry("nightly-report", description="the morning digest for ops"))
    schedules.add(im_entry("heartbeat"))
    schedules.add(im_entry("old-ping", enabled=False))
    at = datetime.now(UTC) + timedelta(days=3)
    schedules.add(email_entry("launch", schedule=ClockedSchedule(at=at)))
    schedules.store.sync_source("code", [im_entry("from-code").validated(REGISTRY)])
    client = login("view_schedule")

    page = client.get(ADMIN)
    assert page.status_code == 200
    assert listed(page) == ["from-code", "heartbeat", "launch", "nightly-report", "old-ping"]
    html = page.content.decode()
    assert "0 8 * * * (Europe/Berlin)" in html and "every 5 min" in html
    assert "notifier.email.send" in html

    assert listed(client.get(ADMIN, {"enabled": "0"})) == ["old-ping"]
    assert listed(client.get(ADMIN, {"kind": "clocked"})) == ["launch"]
    assert listed(client.get(ADMIN, {"kind": "interval", "enabled": "1"})) == [
        "from-code",
        "heartbeat",
    ]
    assert listed(client.get(ADMIN, {"task": "notifier.email.send"})) == [
        "launch",
        "nightly-report",
    ]
    assert listed(client.get(ADMIN, {"source": "code"})) == ["from-code"]
    # Search: name, contract, description; case does not matter.
    assert listed(client.get(ADMIN, {"q": "HEART"})) == ["heartbeat"]
    assert listed(client.get(ADMIN, {"q": "im.send"})) == ["from-code", "heartbeat", "old-ping"]
    assert listed(client.get(ADMIN, {"q": "digest"})) == ["nightly-report"]
    assert listed(client.get(ADMIN, {"q": "digest", "kind": "interval"})) == []
    # A view-only user has no checkboxes, no actions and no add link.
    assert 'name="_selected_action"' not in html and 'name="action"' not in html
    assert f"{ADMIN}add/" not in html


def test_the_list_shows_100_entries_a_page(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    for number in range(105):
        schedules.add(im_entry(f"ping-{number:03}"))
    client = login("view_schedule")
    first = client.get(ADMIN)
    assert listed(first)[0] == "ping-000" and len(listed(first)) == 100
    assert "page 1 of 2" in first.content.decode()
    assert listed(client.get(ADMIN, {"p": "2"})) == [f"ping-{n}" for n in range(100, 105)]
    searched = client.get(ADMIN, {"q": "ping-10"})
    assert listed(searched) == [f"ping-{n}" for n in range(100, 105)]
    assert "page 1 of" not in searched.content.decode()


def test_bulk_actions_enable_disable_and_run_as_the_user(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    for name in ("a", "b", "c"):
        schedules.add(im_entry(name))
    client = login("view_schedule", "change_schedule", "run_schedule")
    page = client.get(ADMIN)
    html = page.content.decode()
    assert '<option value="disable">' in html and '<option value="run_now">' in html

    done = client.post(ADMIN, {"action": "disable", "_selected_action": ["a", "b"]}, follow=True)
    assert "Disabled: a, b." in done.content.decode()
    assert [v.entry.enabled for v in schedules.list()] == [False, False, True]
    # With the filter applied, "select across" takes every matching entry.
    client.post(f"{ADMIN}?enabled=0", {"action": "enable", "select_across": "1", "index": "0"})
    assert all(view.entry.enabled for view in schedules.list())

    ran = client.post(ADMIN, {"action": "run_now", "_selected_action": ["c"]}, follow=True)
    assert "Ran now: c (task " in ran.content.decode()
    (firing,) = schedules.history("c")
    assert firing.firing.manual and firing.status == "pending"  # no worker consumes here
    record = schedules.audit("c")[0]
    assert record.action == "ran" and record.actor.via == "admin"
    assert record.actor.who.startswith("staff-")
    assert [r.action for r in schedules.audit("a")] == ["enabled", "disabled", "created"]


# ------------------------------------------------------------------------------- permissions


def test_a_view_only_user_sees_everything_and_changes_nothing(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    schedules.add(im_entry("heartbeat"))
    client = login("view_schedule")
    page = client.get(f"{ADMIN}heartbeat/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Run history" in html and "Audit trail" in html
    for control in ('value="Disable"', 'value="Run now"', "/edit/", "/delete/"):
        assert control not in html, control
    assert client.get(f"{ADMIN}add/").status_code == 403
    assert client.get(f"{ADMIN}heartbeat/edit/").status_code == 403
    assert client.post(f"{ADMIN}heartbeat/disable/").status_code == 403
    assert client.post(f"{ADMIN}heartbeat/run/").status_code == 403
    assert client.post(f"{ADMIN}heartbeat/delete/").status_code == 403
    assert (
        client.post(ADMIN, {"action": "disable", "_selected_action": ["heartbeat"]}).status_code
        == 403
    )
    assert schedules.show("heartbeat").entry.enabled
    assert [r.action for r in schedules.audit("heartbeat")] == ["created"]
    # Without even the view permission: nothing.
    assert login().get(ADMIN).status_code == 403


def test_running_now_needs_its_own_permission(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    schedules.add(im_entry("heartbeat"))
    changer = login("view_schedule", "change_schedule")
    page = changer.get(f"{ADMIN}heartbeat/change/").content.decode()
    assert 'value="Disable"' in page and 'value="Run now"' not in page
    assert 'value="run_now"' not in changer.get(ADMIN).content.decode()
    assert changer.post(f"{ADMIN}heartbeat/run/").status_code == 403
    refused = changer.post(ADMIN, {"action": "run_now", "_selected_action": ["heartbeat"]})
    assert refused.status_code == 403
    assert schedules.history("heartbeat") == []

    runner = login("view_schedule", "run_schedule")
    assert runner.post(f"{ADMIN}heartbeat/disable/").status_code == 403  # running is not changing
    done = runner.post(f"{ADMIN}heartbeat/run/", follow=True)
    assert "Ran now: heartbeat (task " in done.content.decode()
    (outcome,) = schedules.history("heartbeat")
    assert outcome.firing.actor is not None and outcome.firing.actor.via == "admin"
    assert runner.get(f"{ADMIN}heartbeat/run/").status_code == 405  # a change is a POST


def test_the_run_permission_exists_and_the_model_has_no_table(django_project: str) -> None:
    from django.db import connection

    from tasklane.contrib.django.models import Schedule

    permission = Permission.objects.get(content_type__app_label="tasklane", codename="run_schedule")
    assert permission.name == "Can run a schedule now"
    assert {"view_schedule", "change_schedule", "add_schedule", "delete_schedule"} <= set(
        Permission.objects.filter(content_type__app_label="tasklane").values_list(
            "codename", flat=True
        )
    )
    assert not Schedule._meta.managed
    assert Schedule._meta.db_table not in connection.introspection.table_names()


# ------------------------------------------------------------------------------- the form


def test_adding_an_interval_entry_records_who_did_it(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    client = login("view_schedule", "add_schedule")
    page = client.get(f"{ADMIN}add/")
    assert page.status_code == 200
    assert '<option value="notifier.email.send">' in page.content.decode()  # from the registry

    done = client.post(
        f"{ADMIN}add/",
        form(every="2.5", priority="7", expires_after="30", description="liveness ping"),
    )
    assert done.status_code == 302 and done["Location"] == f"{ADMIN}heartbeat/change/"
    view = schedules.show("heartbeat")
    entry = view.entry
    assert entry.schedule == IntervalSchedule(every=2.5)
    assert (entry.priority, entry.expires_after, entry.source) == (7, 30.0, "api")
    assert entry.payload["text"] == "tick" and entry.description == "liveness ping"
    (record,) = schedules.audit("heartbeat")
    assert record.action == "created"
    assert record.actor == Actor(via="admin", who=record.actor.who)
    assert record.actor.who.startswith("staff-")
    again = client.post(f"{ADMIN}add/", form())
    assert "exists already" in " ".join(field_errors(again, "name"))


def test_adding_crontab_and_one_off_entries_in_a_time_zone(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    client = login("view_schedule", "add_schedule")
    cron = form(
        name="nightly",
        task="notifier.email.send",
        payload=json.dumps(EMAIL),
        kind="crontab",
        timezone="Europe/Berlin",
        minute="30",
        hour="2",
        day_of_week="mon-fri",
        start_at="2030-01-01 00:00",
        enabled=None,
    )
    assert client.post(f"{ADMIN}add/", cron).status_code == 302
    entry = schedules.show("nightly").entry
    assert entry.schedule == CrontabSchedule(
        minute="30", hour="2", day_of_week="mon-fri", timezone="Europe/Berlin"
    )
    assert not entry.enabled
    assert entry.start_at == datetime(2029, 12, 31, 23, 0, tzinfo=UTC)  # Berlin is UTC+1 then

    at = form(name="launch", kind="clocked", timezone="Asia/Tokyo", at="2031-06-01 09:00")
    assert client.post(f"{ADMIN}add/", at).status_code == 302
    schedule = schedules.show("launch").entry.schedule
    assert isinstance(schedule, ClockedSchedule)
    assert schedule.at == datetime(2031, 6, 1, 0, 0, tzinfo=UTC)
    # An offset typed with the time wins over the time zone field.
    offset = form(name="launch2", kind="clocked", at="2031-06-01T09:00:00+02:00")
    assert client.post(f"{ADMIN}add/", offset).status_code == 302
    schedule = schedules.show("launch2").entry.schedule
    assert isinstance(schedule, ClockedSchedule)
    assert schedule.at == datetime(2031, 6, 1, 7, 0, tzinfo=UTC)


def test_problems_are_shown_on_their_fields_payload_ones_with_the_json_path(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    client = login("view_schedule", "add_schedule")
    bad_email = {**EMAIL, "to": ["ops@example.com", "not-an-email"]}
    page = client.post(
        f"{ADMIN}add/", form(task="notifier.email.send", payload=json.dumps(bad_email))
    )
    assert page.status_code == 200
    (problem,) = field_errors(page, "payload")
    assert problem.startswith("to.1: value is not a valid email address")
    assert "Please correct the error below." in page.content.decode()

    missing = client.post(f"{ADMIN}add/", form(payload=json.dumps({"channel": "webhook"})))
    assert sorted(field_errors(missing, "payload")) == [
        "text: Field required",
        "url: Field required",
    ]

    not_json = client.post(f"{ADMIN}add/", form(payload='{"channel": "webhook",}'))
    assert field_errors(not_json, "payload")[0].startswith("line 1 column 23:")
    assert field_errors(client.post(f"{ADMIN}add/", form(payload="[]")), "payload") == [
        "must be a JSON object: {...}"
    ]

    cron = client.post(f"{ADMIN}add/", form(kind="crontab", minute="61"))
    assert field_errors(cron, "minute") and not field_errors(cron, "hour")
    assert field_errors(client.post(f"{ADMIN}add/", form(every="")), "every") == [
        "Give the seconds between two runs."
    ]
    assert field_errors(client.post(f"{ADMIN}add/", form(every="0")), "every")
    assert field_errors(client.post(f"{ADMIN}add/", form(name="no spaces")), "name")
    assert field_errors(client.post(f"{ADMIN}add/", form(priority="10")), "priority")

    # What the schedules API refuses (ScheduleInvalidError.field) lands on that field too.
    past = client.post(f"{ADMIN}add/", form(kind="clocked", at="2001-01-01 00:00"))
    assert "is in the past" in " ".join(field_errors(past, "at"))
    window = client.post(
        f"{ADMIN}add/", form(start_at="2031-01-02 00:00", expires_at="2031-01-01 00:00")
    )
    assert "is not after start_at" in " ".join(field_errors(window, "expires_at"))
    assert schedules.list() == []


def test_editing_keeps_the_run_count_and_history_and_audits_the_difference(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    schedules.add(im_entry("heartbeat", every=60))
    schedules.run_now("heartbeat", actor=Actor(via="cli", who="ops"))
    client = login("view_schedule", "change_schedule")

    page = client.get(f"{ADMIN}heartbeat/edit/")
    assert page.status_code == 200
    unchanged = form_values(page)
    assert "name" not in unchanged  # shown, disabled: the name is the entry's identity
    assert (unchanged["kind"], unchanged["every"], unchanged["enabled"]) == ("interval", "60", "on")
    assert IM.items() <= json.loads(unchanged["payload"]).items()  # with the contract's defaults
    same = client.post(f"{ADMIN}heartbeat/edit/", unchanged, follow=True)
    assert "is unchanged" in same.content.decode()

    changed = {**unchanged, "every": "90", "description": "slower", "enabled": None}
    done = client.post(
        f"{ADMIN}heartbeat/edit/", {k: v for k, v in changed.items() if v is not None}
    )
    assert done.status_code == 302
    view = schedules.show("heartbeat")
    assert view.entry.schedule == IntervalSchedule(every=90) and not view.entry.enabled
    assert view.state.total_run_count == 1 and len(schedules.history("heartbeat")) == 1
    disabled, edited, ran, created = schedules.audit("heartbeat")
    assert (disabled.action, edited.action, ran.action, created.action) == (
        "disabled",
        "changed",
        "ran",
        "created",
    )
    assert set(edited.changes) == {"schedule", "description"}
    assert edited.changes["description"] == {"old": "", "new": "slower"}
    assert edited.actor.via == "admin" and ran.actor == Actor(via="cli", who="ops")

    detail = client.get(f"{ADMIN}heartbeat/change/").content.decode()
    assert "every 90 s" in detail and "ops" in detail and "(cli)" in detail
    assert "<strong>description</strong>" in detail  # the change, field by field


# ------------------------------------------------------------------------------- entry pages


def test_file_and_code_entries_are_read_only_and_say_where_they_come_from(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    schedules.store.sync_source("file", [im_entry("from-file").validated(REGISTRY)])
    schedules.store.sync_source("code", [email_entry("from-code").validated(REGISTRY)])
    client = login(superuser=True)

    file_page = client.get(f"{ADMIN}from-file/change/").content.decode()
    assert "Managed by the schedule file (TASKLANE_BEAT_SCHEDULE_FILE)" in file_page
    code_page = client.get(f"{ADMIN}from-code/change/").content.decode()
    assert "Managed by code: beat_schedule" in code_page
    for html in (file_page, code_page):
        assert "/edit/" not in html and "/delete/" not in html
        assert 'value="Disable"' in html and 'value="Run now"' in html
    assert client.get(f"{ADMIN}from-file/edit/").status_code == 403
    assert client.post(f"{ADMIN}from-code/delete/").status_code == 403
    assert client.post(f"{ADMIN}from-file/disable/").status_code == 302
    assert not schedules.show("from-file").entry.enabled
    assert client.post(f"{ADMIN}from-code/run/").status_code == 302
    assert schedules.history("from-code")[0].firing.manual


def test_deleting_asks_first_and_keeps_the_audit_trail(
    schedules: Schedules, login: Callable[..., Client]
) -> None:
    schedules.add(im_entry("heartbeat"))
    assert (
        login("view_schedule", "change_schedule").get(f"{ADMIN}heartbeat/delete/").status_code
        == 403
    )
    client = login("view_schedule", "delete_schedule")
    assert "/heartbeat/delete/" in client.get(f"{ADMIN}heartbeat/change/").content.decode()
    confirm = client.get(f"{ADMIN}heartbeat/delete/")
    assert "Are you sure you want to delete the schedule “heartbeat”?" in confirm.content.decode()
    assert schedules.list() != []  # asking deletes nothing
    done = client.post(f"{ADMIN}heartbeat/delete/", {"post": "yes"}, follow=True)
    assert "was deleted" in done.content.decode()
    assert schedules.list() == []
    assert [r.action for r in schedules.audit("heartbeat")] == ["deleted", "created"]
    assert client.get(f"{ADMIN}heartbeat/change/").status_code == 404


def test_the_run_history_shows_each_outcome_from_the_result_backend(
    env: BrokerEnv,
    schedules: Schedules,
    tasklane_setting: Callable[..., None],
    login: Callable[..., Client],
    tmp_path: Path,
) -> None:
    """A task that fails for good shows as dead-lettered with its error (the flaky service)."""
    tasklane_setting(
        BROKER_URL=env.broker_url,
        RESULT_BACKEND=env.result_backend,
        NAMESPACE=env.namespace,
        REGISTRY="tests.support.flaky_contracts:FLAKY_REGISTRY",
    )
    with Schedules(env.settings, registry=FLAKY_REGISTRY) as flaky:
        flaky.add(
            ScheduleEntry(
                name="always-fails",
                task="flaky.always.fail",
                payload={"label": "billing"},
                schedule=IntervalSchedule(every=3600),
            )
        )
        flaky.add(
            ScheduleEntry(
                name="quick",
                task="flaky.slow.run",
                payload={"label": "quick"},
                schedule=IntervalSchedule(every=3600),
            )
        )
    client = login(superuser=True)
    client.post(f"{ADMIN}always-fails/run/")
    client.post(f"{ADMIN}quick/run/")
    command = [
        sys.executable, "-m", "celery", "-A", "tests.support.flaky_service", "worker",
        "--concurrency", "2", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = WorkerProcess.from_command(command, env.env(), tmp_path / "flaky.log")
    try:
        worker.wait_ready()

        def statuses() -> dict[str, str] | None:
            seen = {}
            for name in ("always-fails", "quick"):
                html = client.get(f"{ADMIN}{name}/change/").content.decode()
                seen[name] = re.findall(r'data-status="([^"]+)"', html)
            done = seen == {"always-fails": ["dead-lettered"], "quick": ["succeeded"]}
            return {name: found[0] for name, found in seen.items()} if done else None

        eventually(statuses, timeout=60, interval=0.3, message="both outcomes on their pages")
    finally:
        worker.stop()
    html = client.get(f"{ADMIN}always-fails/change/").content.decode()
    assert "billing: upstream unavailable" in html  # the error, with the outcome
    assert "run now by" in html


def test_an_unknown_entry_is_404_and_a_missing_store_is_explained(
    schedules: Schedules, login: Callable[..., Client], tasklane_setting: Callable[..., None]
) -> None:
    client = login(superuser=True)
    assert client.get(f"{ADMIN}nope/change/").status_code == 404
    assert client.post(f"{ADMIN}nope/run/").status_code == 404
    # A RabbitMQ broker and no Redis: the pages say what to set, and a check warns.
    tasklane_setting(BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    page = client.get(ADMIN)
    assert page.status_code == 503
    assert "The schedule store is not configured" in page.content.decode()
    warnings = [m for m in checks.run_checks() if m.id == "tasklane.W002"]
    assert len(warnings) == 1 and "RESULT_BACKEND" in (warnings[0].hint or "")
    # Redis that does not answer.
    tasklane_setting(BROKER_URL="redis://127.0.0.1:1/0")
    page = client.get(ADMIN)
    assert page.status_code == 503
    assert "does not answer" in page.content.decode()
    assert [m for m in checks.run_checks() if m.id == "tasklane.W002"] == []
