"""manage.py tasklane_import_beat against real PostgreSQL rows made through django-celery-beat's own
models, the entries read back from the real Redis Beat store through ``Schedules``."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from tasklane.beat.client import Schedules, default_actor
from tasklane.beat.models import (
    ENTRY_NAME_PATTERN,
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    ScheduleEntry,
)
from tests.support.harness import BrokerEnv, cleanup

pytestmark = pytest.mark.integration

IM = "notifier.im.send"
EMAIL = "notifier.email.send"
IM_KWARGS = '{"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}'
#: The IM payload as the contract normalises it (defaults filled).
IM_PAYLOAD = {
    "channel": "webhook",
    "url": "https://hooks.example.org/x",
    "text": "hi",
    "title": None,
    "secret_ref": None,
    "idempotency_key": None,
}


@dataclass(frozen=True)
class Run:
    """What one run of the command printed, and its exit status."""

    status: int
    out: str
    err: str

    def line(self, row: str) -> str:
        """The report line of the django-celery-beat row named ``row``."""
        found = [line for line in self.out.splitlines() if f" {row!r} -> " in line]
        assert len(found) == 1, f"one line for {row!r} in:\n{self.out}"
        return found[0]


@pytest.fixture
def env(redis_url: str) -> Iterator[BrokerEnv]:
    """Redis as broker and Beat store, in a namespace of this test's own."""
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield broker
    cleanup(broker)


@pytest.fixture
def schedules(env: BrokerEnv, tasklane_setting: Callable[..., None]) -> Iterator[Schedules]:
    """The command configured for this test's store, and ``Schedules`` to read it back."""
    tasklane_setting(BROKER_URL=env.broker_url, NAMESPACE=env.namespace)
    with Schedules(env.settings) as managed:
        yield managed


@pytest.fixture(autouse=True)
def _empty_beat_tables(django_project: str) -> Iterator[None]:
    yield
    from django_celery_beat import models

    models.PeriodicTask.objects.all().delete()
    for schedule in (
        models.IntervalSchedule,
        models.CrontabSchedule,
        models.ClockedSchedule,
        models.SolarSchedule,
    ):
        schedule.objects.all().delete()


def run(*arguments: str) -> Run:
    """``manage.py tasklane_import_beat ARGUMENTS`` in this process."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("tasklane_import_beat", *arguments, stdout=out, stderr=err)
    except CommandError as exc:
        return Run(exc.returncode, out.getvalue(), str(exc))
    return Run(0, out.getvalue(), err.getvalue())


def now() -> datetime:
    from django.utils import timezone

    return timezone.now().replace(microsecond=0)


def interval(every: int, period: str) -> Any:
    from django_celery_beat.models import IntervalSchedule as Interval

    return Interval.objects.create(every=every, period=period)


def crontab(**fields: str) -> Any:
    from django_celery_beat.models import CrontabSchedule as Crontab

    return Crontab.objects.create(**fields)


def clocked(at: datetime) -> Any:
    from django_celery_beat.models import ClockedSchedule as Clocked

    return Clocked.objects.create(clocked_time=at)


def task(name: str, **fields: Any) -> Any:
    """A ``PeriodicTask`` saved through its model (an interval of 5 minutes unless given)."""
    from django_celery_beat.models import PeriodicTask

    fields.setdefault("task", IM)
    fields.setdefault("kwargs", IM_KWARGS)
    if not any(key in fields for key in ("interval", "crontab", "clocked", "solar")):
        fields["interval"] = interval(5, "minutes")
    return PeriodicTask.objects.create(name=name, **fields)


def stored(schedules: Schedules, name: str) -> ScheduleEntry:
    """The entry as the store holds it, without the time it was made."""
    entry = schedules.show(name).entry
    assert entry.created_at is not None
    return entry.model_copy(update={"created_at": None})


def name_hash(name: str) -> str:
    """The 8 hex digits an imported row's name gets when Tasklane does not accept it as it is."""
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def store_snapshot(env: BrokerEnv) -> dict[bytes, bytes | None]:
    """Every key of this test's namespace with its value (Redis DUMP), to see that none changed."""
    client = redis.Redis.from_url(env.result_backend)
    return {key: client.dump(key) for key in client.scan_iter(f"{env.namespace}*")}


# ------------------------------------------------------------------------------------- names


def test_names_tasklane_accepts_stay_and_others_become_a_stable_slug_with_a_hash() -> None:
    from tasklane.contrib.django.beat_import import entry_name

    assert entry_name("reports.nightly:eu-1") == "reports.nightly:eu-1"
    slug = entry_name("Nightly digest (EU)")
    assert re.fullmatch(r"Nightly-digest-EU-[0-9a-f]{8}", slug)
    assert entry_name("Nightly digest (EU)") == slug  # the same entry on every run
    assert entry_name("a b") != entry_name("a/b")  # alike as slugs, apart by their hash
    assert re.fullmatch(r"Resume-quotidien-[0-9a-f]{8}", entry_name("Résumé quotidien"))
    assert re.fullmatch(r"beat-[0-9a-f]{8}", entry_name("日報"))
    for name in ("x" * 200 + " y", " leading space", "-dash first", "日報"):
        assert re.fullmatch(ENTRY_NAME_PATTERN, entry_name(name))


# ------------------------------------------------------------------------------------- imports


def test_every_schedule_kind_and_option_is_imported_and_reads_back_field_by_field(
    schedules: Schedules,
) -> None:
    start, end = now() + timedelta(hours=1), now() + timedelta(days=30)
    task(
        "Nightly digest (EU)",
        interval=interval(5, "minutes"),
        start_time=start,
        expires=end,
        expire_seconds=None,
        description="The digest robot message.",
        queue="notifier.im",  # the contract's own queue: nothing to refuse
    )
    task("fast.tick", interval=interval(1_500_000, "microseconds"), expire_seconds=30, priority=2)
    task("daily.days", interval=interval(2, "days"), enabled=False)
    task(
        "weekday.morning",
        crontab=crontab(
            minute="0, 30", hour="9", day_of_week="1-5", timezone="Asia/Shanghai"
        ),  # the admin lets spaces in; Celery ignores them
        task=EMAIL,
        kwargs='{"to": ["ops@example.org"], "subject": "Morning", "text": "Good morning"}',
    )
    at = now() + timedelta(days=2)
    task("launch.once", clocked=clocked(at), one_off=True)
    task("once.at.start", interval=interval(1, "hours"), one_off=True, start_time=start)
    later = task("once.after.an.hour", interval=interval(1, "hours"), one_off=True)
    task(
        "once.on.crontab",
        crontab=crontab(minute="15", hour="*/2", timezone="Europe/Berlin"),
        one_off=True,
        start_time=start,
    )

    result = run("--celery-broker", "redis")

    assert result.status == 0, result
    slug = "Nightly-digest-EU-" + name_hash("Nightly digest (EU)")  # the mapping, printed
    assert result.line("Nightly digest (EU)") == (
        f"imported      'Nightly digest (EU)' -> {slug}: interval every 300 s, "
        f"from {start.isoformat()}, until {end.isoformat()}"
    )
    assert "8 django-celery-beat rows: 8 imported" in result.out
    common = {"task": IM, "payload": IM_PAYLOAD, "source": "api"}
    assert stored(schedules, slug) == ScheduleEntry(
        name=slug,
        schedule=IntervalSchedule(every=300),
        start_at=start,
        expires_at=end,
        description="The digest robot message.",
        **common,
    )
    # Microseconds become fractional seconds; Celery on Redis read priority 2 as urgent: 9 - 2.
    assert stored(schedules, "fast.tick") == ScheduleEntry(
        name="fast.tick",
        schedule=IntervalSchedule(every=1.5),
        expires_after=30.0,
        priority=7,
        **common,
    )
    assert stored(schedules, "daily.days") == ScheduleEntry(
        name="daily.days", schedule=IntervalSchedule(every=2 * 86_400), enabled=False, **common
    )
    morning = stored(schedules, "weekday.morning")
    assert morning.schedule == CrontabSchedule(
        minute="0,30", hour="9", day_of_week="1-5", timezone="Asia/Shanghai"
    )
    assert (morning.task, morning.payload["to"], morning.payload["subject"]) == (
        EMAIL,
        ["ops@example.org"],
        "Morning",
    )
    assert (morning.enabled, morning.start_at, morning.expires_at) == (True, None, None)
    # One-offs become clocked entries at the one time django-celery-beat would run them.
    assert stored(schedules, "launch.once") == ScheduleEntry(
        name="launch.once", schedule=ClockedSchedule(at=at), **common
    )
    assert stored(schedules, "once.at.start").schedule == ClockedSchedule(at=start)
    later.refresh_from_db()
    assert stored(schedules, "once.after.an.hour").schedule == ClockedSchedule(
        at=later.date_changed + timedelta(hours=1)
    )
    # The first 15 past an even hour on Berlin's clock at or after the start.
    berlin = ZoneInfo("Europe/Berlin")
    first = start + timedelta(seconds=-start.second % 60)
    while not (first.minute == 15 and first.astimezone(berlin).hour % 2 == 0):
        first += timedelta(minutes=1)
    assert stored(schedules, "once.on.crontab").schedule == ClockedSchedule(at=first)
    for name in ("fast.tick", "launch.once", slug):
        (created,) = schedules.audit(name)
        assert (created.action, created.actor) == ("created", default_actor("import"))


def test_every_refusal_and_skip_says_why_and_stores_nothing(
    schedules: Schedules, env: BrokerEnv
) -> None:
    from django_celery_beat.models import SolarSchedule

    past, future = now() - timedelta(days=1), now() + timedelta(days=1)
    refused = {
        "no contract": dict(task="proj.tasks.cleanup", kwargs="{}"),
        "positional": dict(args='["ops@example.org"]'),
        "queue": dict(queue="celery"),
        "exchange": dict(exchange="beat"),
        "routing key": dict(routing_key="beat.im"),
        "headers": dict(headers='{"tenant": "eu"}'),
        "solar": dict(
            solar=SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
        ),
        "sub-second": dict(interval=interval(500_000, "microseconds")),
        "both days": dict(crontab=crontab(minute="0", day_of_month="1", day_of_week="1")),
        "sunday seven": dict(crontab=crontab(minute="0", day_of_week="7")),
        "bad kwargs": dict(kwargs='{"channel": "fax", "url": "https://x.example", "text": ""}'),
        "broken json": dict(kwargs='{"channel": '),
        "priority unread": dict(priority=3),
        "priority high": dict(priority=200),
        "one-off owed": dict(
            interval=interval(1, "hours"), one_off=True, start_time=past, enabled=True
        ),
        "long description": dict(description="d" * 501),
        "taken": {},
    }
    for name, fields in refused.items():
        task(name, **fields)
    schedules.add(
        ScheduleEntry(
            name="taken",
            task=IM,
            payload=IM_PAYLOAD,
            schedule=IntervalSchedule(every=60),
        )
    )
    skipped = {
        "celery.backend_cleanup": dict(
            task="celery.backend_cleanup", kwargs="{}", crontab=crontab(minute="0", hour="4")
        ),
        "expired": dict(expires=past),
        "starts after expiry": dict(start_time=future + timedelta(days=1), expires=future),
        "one-off done": dict(one_off=True, total_run_count=1),
        "one-off passed": dict(clocked=clocked(past), one_off=True, enabled=False),
    }
    for name, fields in skipped.items():
        task(name, **fields)
    before = store_snapshot(env)

    result = run()

    assert result.status == 1, result
    assert result.err == "17 of 22 rows refused; the lines above say why"
    assert "22 django-celery-beat rows: 5 skipped, 17 refused" in result.out
    reasons = {
        "no contract": "task 'proj.tasks.cleanup' has no contract in the registry",
        "positional": 'positional args ["ops@example.org"]: a contract\'s payload is keyword',
        "queue": "queue 'celery': Tasklane sends a contract to its own queue (notifier.im)",
        "exchange": "exchange 'beat': Tasklane routes by contract",
        "routing key": "routing_key 'beat.im': Tasklane routes by contract",
        "headers": 'headers {"tenant": "eu"}: Tasklane sets a message\'s headers itself',
        "solar": "solar schedule (sunrise): Tasklane has interval, crontab and clocked",
        "sub-second": "interval of 500000 microseconds (0.5 s): under a second",
        "both days": "crontab restricts both day_of_month (1) and day_of_week (1): Celery fires "
        "when both match, Tasklane (as cron) when either does",
        "sunday seven": "crontab: day_of_week: 7 is out of range 0-6 (0 is Sunday)",
        "bad kwargs": "kwargs break the contract notifier.im.send: kwargs.channel: Input should "
        "be 'dingtalk', 'slack' or 'webhook'; kwargs.text: String should have at least 1 character",
        "broken json": "kwargs is not valid JSON",
        "priority unread": "priority 3: Celery sent it as is, most urgent 9 on RabbitMQ but 0 "
        "on Redis; say which broker it used with --celery-broker",
        "priority high": "priority 200: Tasklane's priorities are 0..9",
        "one-off owed": f"one-off due at {past.isoformat()} has not run: a one-off in the past "
        "cannot be scheduled",
        "long description": "description: String should have at most 500 characters",
        "taken": "name 'taken' is taken by an existing Tasklane entry (--replace overwrites it)",
        "celery.backend_cleanup": "Celery's own result cleanup: Tasklane's Redis result backend "
        "expires results itself",
        "expired": f"expired at {past.isoformat()}: django-celery-beat runs it no more",
        "starts after expiry": "after it expires",
        "one-off done": "one-off that ran already (1 run(s))",
        "one-off passed": f"disabled one-off whose time ({past.isoformat()}) has passed",
    }
    for row, reason in reasons.items():
        status = "refused" if row in refused else "skipped"
        line = result.line(row)
        assert line.startswith(f"{status:<12}  {row!r} -> "), line
        assert reason in line, line
    assert store_snapshot(env) == before  # nothing added; the entry already there is untouched
    assert [view.entry.name for view in schedules.list()] == ["taken"]


def test_a_crontab_that_ran_in_celerys_time_zone_is_refused(schedules: Schedules) -> None:
    from django.test import override_settings

    task("morning", crontab=crontab(minute="0", hour="9", timezone="Asia/Shanghai"))
    task("hourly", interval=interval(1, "hours"))

    with override_settings(DJANGO_CELERY_BEAT_TZ_AWARE=False):
        result = run()

    assert result.status == 1
    assert result.line("morning") == (
        "refused       'morning' -> morning: DJANGO_CELERY_BEAT_TZ_AWARE is False: "
        "django-celery-beat ran this crontab in Celery's time zone, not in its own "
        "(Asia/Shanghai); add it by hand"
    )
    assert result.line("hourly").startswith("imported")


def test_a_dry_run_writes_nothing_to_either_store_and_predicts_the_real_run(
    schedules: Schedules, env: BrokerEnv
) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    task("hourly", interval=interval(1, "hours"))
    task("Weekly report", crontab=crontab(minute="0", hour="8", day_of_week="mon"))
    task("with args", args="[1]")
    rows_before = list(PeriodicTask.objects.order_by("name").values())
    changed_before = PeriodicTasks.last_change()
    keys_before = store_snapshot(env)

    dry = run("--dry-run", "--disable-source")

    assert dry.status == 1, dry  # a row would be refused
    assert dry.line("hourly") == "would import  'hourly' -> hourly: interval every 3600 s"
    weekly = "Weekly-report-" + name_hash("Weekly report")
    assert dry.line("Weekly report") == (
        f"would import  'Weekly report' -> {weekly}: crontab \"0 8 * * mon\" UTC"
    )
    assert dry.line("with args").startswith("refused       'with args' -> with-args-")
    assert "would disable in django-celery-beat: 'hourly'" in dry.out
    assert "would disable in django-celery-beat: 'with args'" not in dry.out
    assert "3 django-celery-beat rows: 2 would import, 1 refused" in dry.out
    assert store_snapshot(env) == keys_before == {}
    assert schedules.list() == []
    assert list(PeriodicTask.objects.order_by("name").values()) == rows_before
    assert PeriodicTasks.last_change() == changed_before

    real = run()

    assert real.status == 1
    for row in ("hourly", "Weekly report", "with args"):
        assert real.line(row) == dry.line(row).replace("would import", "imported    ")
    assert sorted(view.entry.name for view in schedules.list()) == [weekly, "hourly"]


def test_disable_source_disables_only_the_rows_tasklane_now_fires(schedules: Schedules) -> None:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    task("moved")
    task("already off", enabled=False)
    task("kept", queue="celery")
    task("celery.backend_cleanup", task="celery.backend_cleanup", kwargs="{}")
    changed_before = PeriodicTasks.last_change()

    result = run("--disable-source")

    assert result.status == 1, result
    assert "disabled in django-celery-beat: 'moved'" in result.out
    assert result.out.count("disabled in django-celery-beat") == 1
    enabled = dict(PeriodicTask.objects.values_list("name", "enabled"))
    assert enabled == {
        "moved": False,
        "already off": False,
        "kept": True,  # refused: django-celery-beat keeps firing it
        "celery.backend_cleanup": True,  # skipped: not Tasklane's to stop
    }
    # A running django-celery-beat scheduler sees the change and reloads its rows.
    assert PeriodicTasks.last_change() > changed_before
    assert schedules.show("moved").entry.enabled
    assert not schedules.show("already-off-" + name_hash("already off")).entry.enabled


def test_replace_overwrites_an_entry_made_at_run_time_never_one_from_code(
    schedules: Schedules,
) -> None:
    old = ScheduleEntry(
        name="digest", task=IM, payload=IM_PAYLOAD, schedule=IntervalSchedule(every=60)
    )
    schedules.add(old)
    schedules.store.sync_source("code", [old.model_copy(update={"name": "from.code"})])
    task("digest", interval=interval(10, "minutes"))
    task("from.code")

    refused = run()
    assert refused.status == 1
    assert "existing Tasklane entry (--replace overwrites it)" in refused.line("digest")
    assert stored(schedules, "digest").schedule == IntervalSchedule(every=60)

    replaced = run("--replace")

    assert replaced.status == 1, replaced
    assert replaced.line("digest").startswith(
        "imported      'digest' -> digest: interval every 600"
    )
    assert stored(schedules, "digest").schedule == IntervalSchedule(every=600)
    changed = schedules.audit("digest")[0]
    assert (changed.action, changed.actor) == ("changed", default_actor("import"))
    assert changed.changes["schedule"]["new"] == {"kind": "interval", "every": 600.0}
    assert "name 'from.code' is taken by an entry managed by code" in replaced.line("from.code")
    assert stored(schedules, "from.code").source == "code"


# ------------------------------------------------------------------------------------- cannot run


def test_without_django_celery_beat_the_command_says_so_and_exits_2(
    schedules: Schedules, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.apps import apps

    task("hourly")
    monkeypatch.setitem(sys.modules, "django_celery_beat", None)  # as if not installed
    missing = run()
    assert missing.status == 2
    assert missing.err.startswith("django-celery-beat is not installed")
    monkeypatch.undo()

    installed = apps.is_installed
    monkeypatch.setattr(
        apps, "is_installed", lambda name: name != "django_celery_beat" and installed(name)
    )
    absent = run()
    assert absent.status == 2
    assert absent.err == "django_celery_beat is not in INSTALLED_APPS: add it to read its tables"
    assert schedules.list() == []


def test_without_a_redis_store_the_command_exits_2(
    tasklane_setting: Callable[..., None],
) -> None:
    task("hourly")
    tasklane_setting(BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")

    result = run("--dry-run")

    assert result.status == 2
    assert result.err.startswith("no schedule store: no Redis for results and idempotency")
    assert result.out == ""
