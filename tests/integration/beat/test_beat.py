"""Real Beat processes: one active, standby takeover, runtime changes, files and code schedules.

Beat publishes to a Redis broker here and no worker consumes, so each test reads what Beat sent
straight from the queue's Redis lists (the schedule and slot travel in message headers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tasklane.beat.client import Schedules
from tasklane.beat.errors import ScheduleInvalidError
from tasklane.beat.models import ClockedSchedule, IntervalSchedule, ScheduleEntry
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.headers import SCHEDULE, SLOT
from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess

# Seconds for Beat processes to start and take the lock: imports take seconds on a busy machine.
STARTUP = 60.0
IM = {"channel": "webhook", "url": "https://hooks.example.org/beat", "text": "tick"}


def sent(env: BrokerEnv, queue: str = "notifier.im") -> list[dict[str, Any]]:
    """Headers of every message Beat put in ``queue`` so far."""
    client = redis.Redis.from_url(env.broker_url)
    messages = []
    for key in redis_queue_keys(f"{env.namespace}{queue}"):
        messages += [json.loads(raw)["headers"] for raw in client.lrange(key, 0, -1)]
    return messages


def slots(env: BrokerEnv, name: str) -> list[datetime]:
    return sorted(datetime.fromisoformat(h[SLOT]) for h in sent(env) if h.get(SCHEDULE) == name)


def ticked_since(schedules: Schedules, moment: datetime) -> bool:
    """The active Beat began a tick at or after ``moment`` and finished it.

    A tick reloads the entries, fires every slot due at its start and then reports, so once
    one that began at ``moment`` is reported, every slot up to ``moment`` has been fired.
    """
    return any(s.holds_lock and s.last_tick >= moment for s in schedules.beats())


def active(schedules: Schedules) -> list[str]:
    return [status.process for status in schedules.beats() if status.holds_lock]


def every(seconds: float, name: str, **fields: Any) -> ScheduleEntry:
    return ScheduleEntry(
        name=name,
        task="notifier.im.send",
        payload=IM,
        schedule=IntervalSchedule(every=seconds),
        **fields,
    )


def test_two_beats_fire_a_2s_interval_15_times_in_30s_never_twice(
    env: BrokerEnv, schedules: Schedules, start_beat: Callable[..., WorkerProcess]
) -> None:
    start_beat()
    start_beat()
    eventually(
        lambda: len(schedules.beats()) == 2 and len(active(schedules)) == 1,
        timeout=STARTUP,
        message="one active beat",
    )
    added = schedules.add(every(2, "tick")).entry
    assert added.created_at is not None
    window_end = added.created_at + timedelta(seconds=30)
    eventually(
        lambda: ticked_since(schedules, window_end),
        timeout=45,
        message="a tick past the 30 s window",
    )
    schedules.disable("tick")
    fired = [slot for slot in slots(env, "tick") if slot <= window_end]
    assert len(fired) == len(set(fired)), "a slot fired twice"
    assert 14 <= len(fired) <= 16, fired
    assert len(active(schedules)) == 1
    assert schedules.show("tick").state.total_run_count >= len(fired)


def test_standby_takes_over_when_the_active_beat_is_killed(
    env: BrokerEnv, schedules: Schedules, start_beat: Callable[..., WorkerProcess]
) -> None:
    beats = [start_beat(), start_beat()]
    eventually(
        lambda: len(active(schedules)) == 1 and len(schedules.beats()) == 2,
        timeout=STARTUP,
        message="one active beat",
    )
    schedules.add(every(2, "tick"))
    eventually(lambda: len(slots(env, "tick")) >= 2, timeout=15, message="two slots fired")
    (holder,) = active(schedules)
    pid = int(holder.split(":")[1])
    (victim,) = [beat for beat in beats if beat.process.pid == pid]
    survivor = next(beat for beat in beats if beat is not victim)
    killed_at = datetime.now(UTC)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(10)
    eventually(
        lambda: any(str(survivor.process.pid) in p for p in active(schedules)),
        timeout=10,
        message="the survivor to take the lock",
    )
    took_over = datetime.now(UTC)
    eventually(
        lambda: len([slot for slot in slots(env, "tick") if slot > took_over]) >= 2,
        timeout=15,
        message="two slots fired by the survivor",
    )
    schedules.disable("tick")
    fired = slots(env, "tick")
    assert len(fired) == len(set(fired)), "a slot fired twice"
    assert (took_over - killed_at).total_seconds() <= 2 + 1.5  # the lock TTL, plus a tick
    gaps = [(b - a).total_seconds() for a, b in zip(fired, fired[1:], strict=False)]
    missed = sum(round(gap / 2) - 1 for gap in gaps)
    assert missed <= 1, (fired, gaps)
    assert fired[-1] > took_over - timedelta(seconds=2)  # the survivor kept firing


def test_runtime_changes_reach_the_running_beat_within_5_seconds(
    env: BrokerEnv, schedules: Schedules, start_beat: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    start_beat(TASKLANE_METRICS_PORT=str(port))
    eventually(lambda: len(active(schedules)) == 1, timeout=STARTUP, message="an active beat")
    added = time.monotonic()
    schedules.add(every(1, "fast"))
    eventually(lambda: slots(env, "fast"), timeout=5, message="the first run")
    assert time.monotonic() - added < 5
    schedules.disable("fast")
    disabled_at = datetime.now(UTC)
    # A tick begun before the change may still fire once; one begun after it has reloaded.
    eventually(lambda: ticked_since(schedules, disabled_at), timeout=10, message="a tick after it")
    fired = slots(env, "fast")
    count = len(fired)
    # Beat goes on ticking past two more slots of the entry, and fires neither.
    two_slots_on = max(fired[-1], disabled_at) + timedelta(seconds=2)
    eventually(
        lambda: ticked_since(schedules, two_slots_on), timeout=10, message="two more slots' time"
    )
    assert len(slots(env, "fast")) == count
    assert not schedules.show("fast").entry.enabled and schedules.show("fast").next_run_at is None
    # The liveness probe of a Beat pod: a Beat on this host ticked recently.
    probe = subprocess.run(
        [str(Path(sys.executable).with_name("tasklane")), "beat-health", "--max-age", "10"],
        env={**os.environ, **env.env()},
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert "active, last tick" in probe.stdout
    # Beat's own metrics: the lock, the entries, what fired, and a recent tick.
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    assert values[("tasklane_beat_lock_held", ())] == 1
    assert values[("tasklane_beat_schedules", ())] == 1
    assert values[("tasklane_beat_fired_total", (("schedule", "fast"),))] == count
    assert time.time() - values[("tasklane_beat_last_tick_timestamp_seconds", ())] < 5


def test_one_off_fires_once_expired_never_and_a_lost_contract_is_reported(
    env: BrokerEnv, schedules: Schedules, start_beat: Callable[..., WorkerProcess]
) -> None:
    now = datetime.now(UTC)
    past = ScheduleEntry(
        name="too-late", task="notifier.im.send", payload=IM, schedule=ClockedSchedule(at=now)
    )
    with pytest.raises(ScheduleInvalidError, match="in the past") as refused:
        schedules.add(past)
    assert refused.value.field == "schedule.at"
    schedules.add(
        ScheduleEntry(
            name="once",
            task="notifier.im.send",
            payload=IM,
            schedule=ClockedSchedule(at=now + timedelta(seconds=2)),
        )
    )
    expired = every(1, "expired", start_at=now - timedelta(hours=1), expires_at=now)
    with pytest.raises(ScheduleInvalidError, match="in the past") as refused:
        schedules.add(expired)
    assert refused.value.field == "expires_at"
    # Stored below the client's check, as an entry made earlier that has expired since.
    schedules.store.add(expired)
    # An entry whose contract no longer exists (stored as an older release would have).
    ghost = every(1, "ghost").model_copy(update={"task": "billing.invoice.send", "created_at": now})
    redis.Redis.from_url(env.result_backend).hset(
        schedules.store.key("entries"), "ghost", ghost.model_dump_json()
    )
    schedules.add(every(1, "alive"))
    start_beat()
    eventually(
        lambda: len(slots(env, "once")) == 1 and len(slots(env, "alive")) >= 3,
        timeout=STARTUP,
        message="the one-off and three runs of alive",
    )
    # Beat fires the entry beside it twice more: it went on ticking, and the one-off stayed done.
    alive = len(slots(env, "alive"))
    eventually(lambda: len(slots(env, "alive")) >= alive + 2, timeout=10, message="two more runs")
    assert len(slots(env, "once")) == 1
    once = schedules.show("once")
    assert not once.entry.enabled and once.state.total_run_count == 1 and once.next_run_at is None
    assert slots(env, "expired") == []
    assert schedules.show("expired").next_run_at is None
    ghost_view = schedules.show("ghost")
    assert ghost_view.problem is not None and "billing.invoice.send" in ghost_view.problem
    (status,) = schedules.beats()
    assert "ghost" in status.problems and status.holds_lock and status.schedules == 4


APP_MODULE = """
from celery.schedules import crontab
from tasklane.beat.scheduler import create_beat_app

IM = {"channel": "webhook", "url": "https://hooks.example.org/code", "text": "from code"}
app = create_beat_app()
app.conf.beat_schedule = {
    "code-dict": {"task": "notifier.im.send", "schedule": 1.0, "kwargs": IM},
    "code-cron": {"task": "notifier.im.send", "schedule": crontab(minute="*/5"), "kwargs": IM},
    "code-bad": {"task": "notifier.im.send", "schedule": 1.0, "kwargs": {"channel": "fax"}},
}


@app.on_after_configure.connect
def setup_periodic_tasks(sender, **kwargs):
    sender.add_periodic_task(
        1.0, sender.signature("notifier.im.send", kwargs=IM), name="code-periodic"
    )
"""

SCHEDULE_FILE = """
schedules:
  - name: file-tick
    task: notifier.im.send
    payload: {channel: webhook, url: "https://hooks.example.org/file", text: from file}
    schedule: {kind: interval, every: 1}
  - name: file-broken
    task: notifier.im.send
    payload: {channel: webhook}
    schedule: {kind: interval, every: 1}
"""


def test_schedules_from_a_file_and_from_celery_code_and_file_reload(
    env: BrokerEnv,
    schedules: Schedules,
    start_beat: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    (tmp_path / "seedapp.py").write_text(textwrap.dedent(APP_MODULE))
    schedule_file = tmp_path / "schedules.yaml"
    schedule_file.write_text(SCHEDULE_FILE)
    start_beat(
        "--app",
        "seedapp:app",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        TASKLANE_BEAT_SCHEDULE_FILE=str(schedule_file),
    )
    eventually(
        lambda: all(slots(env, n) for n in ("code-dict", "code-periodic", "file-tick")),
        timeout=STARTUP,
        message="code and file schedules firing",
    )
    names = {view.entry.name: view.entry.source for view in schedules.list()}
    assert names == {
        "code-dict": "code",
        "code-cron": "code",
        "code-periodic": "code",
        "file-tick": "file",
    }
    (status,) = schedules.beats()
    assert {"code:code-bad", "file:file-broken"} <= set(status.problems)
    assert "channel" in status.problems["code:code-bad"]
    # The file changes: one entry goes, another comes; the running Beat follows.
    schedule_file.write_text(
        SCHEDULE_FILE.replace("file-tick", "file-tock").split("  - name: file-broken")[0]
    )
    eventually(
        lambda: (
            {v.entry.name for v in schedules.list() if v.entry.source == "file"} == {"file-tock"}
        ),
        timeout=5,
        message="the reloaded file",
    )
    eventually(lambda: slots(env, "file-tock"), timeout=15, message="the new file entry firing")
    with pytest.raises(Exception, match="managed by file"):
        schedules.remove("file-tock")


def test_declarative_sources_reconcile_and_runtime_entries_stay(
    env: BrokerEnv,
    schedules: Schedules,
    start_beat: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    code = tmp_path / "declared.py"
    code.write_text(textwrap.dedent(APP_MODULE))
    schedule_file = tmp_path / "schedules.yaml"
    schedule_file.write_text(SCHEDULE_FILE)
    schedules.add(every(3600, "runtime"))
    schedules.run_now("runtime")
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"

    def sources() -> dict[str, str]:
        return {view.entry.name: view.entry.source for view in schedules.list()}

    first = start_beat(
        "--app", "declared:app", PYTHONPATH=path, TASKLANE_BEAT_SCHEDULE_FILE=str(schedule_file)
    )
    eventually(
        lambda: (
            sources()
            == {
                "code-dict": "code",
                "code-cron": "code",
                "code-periodic": "code",
                "file-tick": "file",
                "runtime": "api",
            }
        ),
        timeout=STARTUP,
        message=lambda: f"code and file entries stored: {sources()}",
    )
    first.stop()
    # The next release drops an entry from beat_schedule and no longer sets a schedule file.
    code.write_text(textwrap.dedent(APP_MODULE).replace('    "code-cron"', '    # "code-cron"'))
    start_beat("--app", "declared:app", PYTHONPATH=path)
    eventually(
        lambda: sources() == {"code-dict": "code", "code-periodic": "code", "runtime": "api"},
        timeout=STARTUP,
        message=lambda: f"entries gone from their source removed: {sources()}",
    )
    runtime = schedules.show("runtime")
    assert runtime.state.total_run_count == 1 and runtime.entry.enabled
