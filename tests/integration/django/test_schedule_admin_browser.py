"""The schedule admin in a real browser, with a real Beat, worker and SMTP server behind it.

Debian's chromium, driven through chromium-driver by Selenium, logs in to a live Django server,
adds an interval entry (a bad payload first), sees Beat fire it at the SMTP sink and the firing
in the run history, disables it and sees it stop. ``TASKLANE_SCREENSHOTS=1`` saves the pages to
docs/images/ (read at import: the autouse fixture clears ``TASKLANE_*`` before a test runs).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from selenium.webdriver.support.ui import Select

from notifier import identity
from tasklane.beat.client import Schedules
from tasklane.beat.models import ClockedSchedule, CrontabSchedule, ScheduleEntry
from tasklane.contracts import REGISTRY
from tasklane_dev.sinks import ReceivedMail, SmtpSink
from tests.integration.django.browser_support import Browser, LiveServer
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup

pytestmark = pytest.mark.integration

SCREENSHOTS = os.environ.get("TASKLANE_SCREENSHOTS") == "1"
IMAGES = Path(__file__).resolve().parents[3] / "docs" / "images"
ADMIN = "/admin/tasklane/schedule/"
NAME = "ops-heartbeat"
SUBJECT = "Heartbeat from the admin"
EVERY = 2  # seconds between two firings
#: Seconds for Beat and the worker to start: imports take long on a busy machine.
STARTUP = 90.0


@pytest.fixture
def env(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis as broker, result backend and Beat's store, in a namespace of this test's own."""
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield broker
    cleanup(broker)


@pytest.fixture
def schedules(env: BrokerEnv) -> Iterator[Schedules]:
    with Schedules(env.settings) as managed:
        yield managed


@pytest.fixture
def processes(env: BrokerEnv, smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[None]:
    """A Beat and a notifier worker of the test's namespace, the worker mailing the sink."""
    tasklane = str(Path(sys.executable).with_name("tasklane"))
    beat = WorkerProcess.from_command(
        [tasklane, "beat"], {**env.env(), "TASKLANE_BEAT_LOCK_TTL": "2"}, tmp_path / "beat.log"
    )
    worker_env = {**env.env(), "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp_sink.port)}
    worker = WorkerProcess("notifier", worker_env, tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready(timeout=STARTUP)
        yield
    finally:
        beat.stop()
        worker.stop()


@dataclass(frozen=True)
class Session:
    """Chromium at the live admin, and the superuser to log in as."""

    chromium: Browser
    username: str
    password: str


@pytest.fixture
def session(env: BrokerEnv, django_project: str) -> Iterator[Session]:
    """Chromium at a live server of the admin over the test's namespace, and a new superuser."""
    username, password = f"ada-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    user = User.objects.create_superuser(username, "ada@example.com", password)
    settings = override_settings(
        ALLOWED_HOSTS=["127.0.0.1"],
        TIME_ZONE="UTC",
        TASKLANE={
            "BROKER_URL": env.broker_url,
            "RESULT_BACKEND": env.result_backend,
            "NAMESPACE": env.namespace,
        },
    )
    settings.enable()
    try:
        with LiveServer() as server:
            chromium = Browser(server.url)
            try:
                yield Session(chromium, username, password)
            finally:
                chromium.quit()
    finally:
        settings.disable()
        user.delete()


def ticked_since(schedules: Schedules, moment: datetime) -> bool:
    """The active Beat began a tick at or after ``moment`` and finished it.

    A tick fires every slot due at its start and then reports, so once one begun at ``moment``
    is reported, every slot up to ``moment`` has been fired (or, disabled, not).
    """
    return any(s.holds_lock and s.last_tick >= moment for s in schedules.beats())


def mails(sink: SmtpSink) -> list[ReceivedMail]:
    return [mail for mail in sink.messages if mail.message["Subject"] == SUBJECT]


def save(chromium: Browser, name: str) -> None:
    if SCREENSHOTS:
        chromium.screenshot(IMAGES / f"admin-schedules-{name}.png")


def add_examples(schedules: Schedules) -> None:
    """Neighbours for the list: a crontab, a one-off and an entry from code (none fire here)."""
    schedules.add(
        ScheduleEntry(
            name="nightly-report",
            task="scraper.report.build",
            payload={"crawl_id": "shop"},
            schedule=CrontabSchedule(minute="0", hour="3", timezone="Europe/Berlin"),
            description="The crawl report, every night",
        )
    )
    schedules.add(
        ScheduleEntry(
            name="launch-mail",
            task="notifier.email.send",
            payload={"to": ["team@example.com"], "subject": "We are live", "text": "Launch!"},
            schedule=ClockedSchedule(
                at=datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
            ),
        )
    )
    digest = ScheduleEntry(
        name="weekly-digest",
        task="notifier.email.send",
        payload={"to": ["ops@example.com"], "subject": "Digest", "text": "…"},
        schedule=CrontabSchedule(minute="0", hour="8", day_of_week="mon"),
    )
    schedules.store.sync_source("code", [digest.validated(REGISTRY)])


@pytest.mark.timeout(600)
def test_add_an_entry_see_beat_fire_it_disable_it_and_see_it_stop(
    env: BrokerEnv,
    schedules: Schedules,
    smtp_sink: SmtpSink,
    processes: None,
    session: Session,
    tmp_path: Path,
) -> None:
    with session.chromium.kept_on_failure(tmp_path / "browser"):
        add_fire_disable(env, schedules, smtp_sink, session)


def add_fire_disable(
    env: BrokerEnv, schedules: Schedules, smtp_sink: SmtpSink, session: Session
) -> None:
    chromium, username = session.chromium, session.username
    eventually(
        lambda: any(status.holds_lock for status in schedules.beats()),
        timeout=STARTUP,
        message="an active Beat",
    )
    add_examples(schedules)

    # Log in, as a person would.
    chromium.open(f"/admin/login/?next={ADMIN}")
    chromium.type("#id_username", username)
    chromium.type("#id_password", session.password)
    chromium.find("input[type=submit]").click()
    chromium.wait_for_text("#changelist", "weekly-digest")
    chromium.find("#toggle-nav-sidebar").click()  # room for the table

    # A bad payload: the error shows on the payload field, with the JSON path.
    chromium.find("#content-main a.addlink").click()
    chromium.wait(lambda: chromium.find("#id_payload"), "the add form")
    chromium.type("#id_name", NAME)
    Select(chromium.find("#id_task")).select_by_value("notifier.email.send")
    bad = {"to": ["ops@example.com", "ops at example.com"], "subject": SUBJECT, "text": "alive"}
    chromium.type("#id_payload", json.dumps(bad))
    Select(chromium.find("#id_kind")).select_by_value("interval")
    chromium.type("#id_every", str(EVERY))
    chromium.type("#id_description", "Tells ops the platform is alive")
    chromium.find("input[name=_save]").click()
    chromium.wait_for_text(
        ".field-payload ul.errorlist", r"^to\.1: value is not a valid email address"
    )
    assert chromium.find("#id_every").get_attribute("value") == str(EVERY)  # kept
    save(chromium, "form-error")
    assert schedules.list() and NAME not in {view.entry.name for view in schedules.list()}

    # Corrected, it is saved: the entry's page.
    good = {**bad, "to": ["ops@example.com"]}
    chromium.type("#id_payload", json.dumps(good))
    chromium.find("input[name=_save]").click()
    chromium.wait_for_text("ul.messagelist", f"The schedule “{NAME}” was added")
    (created,) = schedules.audit(NAME)
    assert (created.action, created.actor.via, created.actor.who) == ("created", "admin", username)

    # The running Beat fires it; the worker mails the sink.
    eventually(lambda: len(mails(smtp_sink)) >= 2, timeout=90, message="two heartbeat mails")
    delivered = {mail.message["Message-ID"] for mail in mails(smtp_sink)}

    # The firing in the run history, its outcome read from the result backend: succeeded, and
    # its task id is that of a mail the sink received.
    def succeeded_firing() -> str | None:
        for row in chromium.find_all("#run-history tr.tasklane-firing"):
            task_id = row.get_attribute("data-task-id") or ""
            key = identity.delivery_key(
                namespace=env.namespace,
                task="notifier.email.send",
                idempotency_key=None,
                task_id=task_id,
            )
            mailed = identity.message_id(key, "localhost") in delivered
            if mailed and row.get_attribute("data-status") == "succeeded":
                return task_id
        return None

    chromium.reload_until(succeeded_firing, "a succeeded firing of a delivered mail")
    assert int(chromium.find(".field-run_count .readonly").text) >= 2

    # Run it now: a manual firing, by this user, in the history and the audit trail.
    chromium.find("#schedule-buttons input[value='Run now']").click()
    ran = chromium.wait_for_text("ul.messagelist", rf"Ran now: {NAME} \(task [0-9a-f-]+\)")
    task_id = ran.rsplit("(task ", 1)[1].rstrip(").")
    manual = f'#run-history tr[data-task-id="{task_id}"]'
    chromium.reload_until(
        lambda: chromium.find(manual).get_attribute("data-status") == "succeeded",
        "the run-now firing succeeded",
    )
    assert f"run now by {username} (admin)" in chromium.find(manual).text
    assert chromium.find('#audit-trail tr[data-action="ran"]').text.count(username) == 1
    save(chromium, "detail")

    # Disable it: Beat stops firing it.
    chromium.find("#schedule-buttons input[value=Disable]").click()
    chromium.wait_for_text("ul.messagelist", f"Disabled: {NAME}")
    assert chromium.find("#schedule-buttons input[value=Enable]")
    disabled = schedules.audit(NAME)[0]
    assert (disabled.action, disabled.actor.who) == ("disabled", username)
    # A tick begun before the disable may still fire its slot; one begun after it has reloaded.
    eventually(
        lambda: ticked_since(schedules, disabled.at), timeout=30, message="a tick after the disable"
    )
    fired = schedules.store.firings(NAME, limit=50)
    # Beat ticks on past three more slots of the entry, and fires none of them.
    window_end = disabled.at + timedelta(seconds=3 * EVERY)
    eventually(
        lambda: ticked_since(schedules, window_end), timeout=60, message="three slots' time on"
    )
    assert schedules.store.firings(NAME, limit=50) == fired
    assert [f for f in fired if f.slot is not None and f.slot > disabled.at] == []
    view = schedules.show(NAME)
    assert not view.entry.enabled and view.next_run_at is None

    # The list says so too.
    chromium.open(f"{ADMIN}?q={NAME}")
    chromium.wait(
        lambda: (
            chromium.find(f'tr[data-schedule="{NAME}"] td.field-enabled img').get_attribute("alt")
            == "False"
        ),
        "the entry shown disabled",
    )
    chromium.open(ADMIN)
    chromium.wait_for_text("#changelist", NAME)
    save(chromium, "list")
