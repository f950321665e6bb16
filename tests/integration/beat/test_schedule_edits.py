"""Editing, enabling, auditing and the run history of schedule entries, over a real Redis.

Time is passed in (``now=``) where a rule depends on it, so a slot that passed while an entry
was disabled is checked at a chosen moment, not by waiting for the clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from tasklane.beat.client import Schedules
from tasklane.beat.errors import ScheduleError, ScheduleInvalidError
from tasklane.beat.models import (
    Actor,
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    ScheduleEntry,
    due_slot,
    next_slot,
)
from tasklane.contracts import SEND_IM
from tasklane.errors import PayloadValidationError
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.config import base_config
from tasklane.wire.routing import queue_name
from tests.support.harness import BrokerEnv

IM = {"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}
ADMIN = Actor(via="admin", who="alice")


def interval(name: str, every: float, **fields: Any) -> ScheduleEntry:
    return ScheduleEntry(
        name=name, task=SEND_IM.name, payload=IM, schedule=IntervalSchedule(every=every), **fields
    )


# ------------------------------------------------------------------ enable: no make-up firing


def test_enable_does_not_fire_the_slot_missed_while_disabled(schedules: Schedules) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    store = schedules.store
    store.add(interval("every5", 5, start_at=t0), now=t0)
    assert store.claim("every5", t0, t0)  # fired at t0
    store.set_enabled("every5", False, now=t0 + timedelta(seconds=1))
    # Re-enabled 11 s after the last run: the slot t0 + 10 s passed while it was disabled.
    enabled_at = t0 + timedelta(seconds=11)
    entry = store.set_enabled("every5", True, now=enabled_at)
    state = store.state("every5")
    assert due_slot(entry, state, enabled_at) is None
    assert next_slot(entry, state, enabled_at) == t0 + timedelta(seconds=15)
    assert state.total_run_count == 1  # a passed slot is not a run
    # From then on it fires as before.
    assert due_slot(entry, state, t0 + timedelta(seconds=15)) == t0 + timedelta(seconds=15)


def test_enable_of_a_crontab_waits_for_its_next_minute(schedules: Schedules) -> None:
    t0 = datetime(2026, 12, 3, 11, 40, tzinfo=UTC)
    store = schedules.store
    cron = ScheduleEntry(
        name="minutely",
        task=SEND_IM.name,
        payload=IM,
        schedule=CrontabSchedule(minute="*"),
        start_at=t0,
        enabled=False,
    )
    store.add(cron, now=t0)
    enabled_at = datetime(2026, 12, 3, 11, 50, 31, tzinfo=UTC)
    entry = store.set_enabled("minutely", True, now=enabled_at)
    state = store.state("minutely")
    assert due_slot(entry, state, enabled_at) is None  # not the 11:50:00 slot
    assert next_slot(entry, state, enabled_at) == datetime(2026, 12, 3, 11, 51, tzinfo=UTC)


def test_enabling_an_enabled_entry_changes_nothing(schedules: Schedules) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    store = schedules.store
    store.add(interval("on", 5, start_at=t0), now=t0)
    store.set_enabled("on", True, now=t0 + timedelta(seconds=11))
    # Still owed: an enabled entry whose slot a stopped Beat missed fires it when Beat returns.
    assert due_slot(store.get("on"), store.state("on"), t0 + timedelta(seconds=11)) is not None


# ------------------------------------------------------------------ entries that never fire


def test_entries_that_could_never_fire_are_refused_naming_the_field(
    schedules: Schedules,
) -> None:
    now = datetime.now(UTC)
    cases = [
        (interval("expired", 5, expires_at=now - timedelta(seconds=1)), "expires_at"),
        (
            interval(
                "inverted",
                5,
                start_at=now + timedelta(hours=2),
                expires_at=now + timedelta(hours=1),
            ),
            "expires_at",
        ),
        (
            ScheduleEntry(
                name="late-one-off",
                task=SEND_IM.name,
                payload=IM,
                schedule=ClockedSchedule(at=now + timedelta(hours=2)),
                expires_at=now + timedelta(hours=1),
            ),
            "expires_at",
        ),
        (
            ScheduleEntry(
                name="past-one-off",
                task=SEND_IM.name,
                payload=IM,
                schedule=ClockedSchedule(at=now - timedelta(seconds=1)),
            ),
            "schedule.at",
        ),
    ]
    for entry, field in cases:
        with pytest.raises(ScheduleInvalidError) as refused:
            schedules.add(entry)
        assert refused.value.field == field, entry.name
    assert schedules.list() == []


# ------------------------------------------------------------------ edit


def test_edit_keeps_run_count_last_run_and_history_and_audits_the_change(
    schedules: Schedules,
) -> None:
    schedules.add(interval("report", 60), actor=ADMIN)
    task_id = schedules.run_now("report", actor=ADMIN)
    before = schedules.show("report")
    assert before.state.total_run_count == 1

    view = schedules.edit(
        "report",
        {"schedule": {"kind": "interval", "every": 30}, "description": "twice as often"},
        actor=Actor(via="cli", who="bob"),
    )

    assert view.entry.schedule == IntervalSchedule(every=30)
    assert view.entry.description == "twice as often"
    assert view.entry.created_at == before.entry.created_at
    assert view.state.total_run_count == 1
    assert view.state.last_run_at == before.state.last_run_at
    assert [outcome.firing.task_id for outcome in schedules.history("report")] == [task_id]
    changed = schedules.audit("report")[0]
    assert changed.action == "changed" and changed.actor == Actor(via="cli", who="bob")
    assert changed.changes == {
        "schedule": {
            "old": {"kind": "interval", "every": 60.0},
            "new": {"kind": "interval", "every": 30.0},
        },
        "description": {"old": "", "new": "twice as often"},
    }


def test_a_changed_schedule_owes_nothing_before_the_edit(schedules: Schedules) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    store = schedules.store
    store.add(interval("slow", 60, start_at=t0), now=t0)
    assert store.claim("slow", t0, t0)
    edited_at = t0 + timedelta(seconds=35)
    entry = store.update(
        store.get("slow").model_copy(update={"schedule": IntervalSchedule(every=10)}),
        now=edited_at,
    )
    state = store.state("slow")
    assert due_slot(entry, state, edited_at) is None  # not the t0 + 30 s slot of the new schedule
    assert next_slot(entry, state, edited_at) == t0 + timedelta(seconds=40)


def test_edit_validates_the_merged_entry_and_refuses_what_it_cannot_change(
    schedules: Schedules,
) -> None:
    schedules.add(interval("report", 60))
    with pytest.raises(PayloadValidationError) as bad_payload:
        schedules.edit("report", {"payload": {**IM, "url": "not a url"}})
    assert [p.location for p in bad_payload.value.problems] == [("url",)]
    with pytest.raises(ValidationError):
        schedules.edit("report", {"priority": 12})
    with pytest.raises(ScheduleInvalidError) as fixed:
        schedules.edit("report", {"name": "other"})
    assert fixed.value.field == "name"
    with pytest.raises(ScheduleInvalidError) as expired:
        schedules.edit("report", {"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    assert expired.value.field == "expires_at"
    assert schedules.show("report").entry.schedule == IntervalSchedule(every=60)
    assert [record.action for record in schedules.audit("report")] == ["created"]


def test_file_and_code_entries_cannot_be_edited_or_removed(schedules: Schedules) -> None:
    schedules.store.sync_source(
        "file", [interval("from-file", 60).model_copy(update={"source": "file"})]
    )
    with pytest.raises(ScheduleError, match="managed by file"):
        schedules.edit("from-file", {"description": "x"})
    with pytest.raises(ScheduleError, match="managed by file"):
        schedules.remove("from-file")
    schedules.disable("from-file", actor=ADMIN)  # the switch stays the operator's
    assert not schedules.show("from-file").entry.enabled


# ------------------------------------------------------------------ audit trail


def test_every_change_is_audited_with_who_and_through_which_door(schedules: Schedules) -> None:
    bob = Actor(via="http", who="billing-service")
    schedules.add(interval("report", 60), actor=ADMIN)
    schedules.disable("report", actor=bob)
    schedules.disable("report", actor=bob)  # no change, no record
    schedules.enable("report", actor=ADMIN)
    task_id = schedules.run_now("report", actor=bob)
    schedules.remove("report", actor=ADMIN)

    trail = schedules.audit("report")
    assert [(r.action, r.actor) for r in trail] == [
        ("deleted", ADMIN),
        ("ran", bob),
        ("enabled", ADMIN),
        ("disabled", bob),
        ("created", ADMIN),
    ]
    assert trail[1].changes == {"task_id": task_id}
    assert [r.name for r in schedules.audit()][:5] == ["report"] * 5
    assert all(earlier.at >= later.at for earlier, later in zip(trail, trail[1:], strict=False))


# ------------------------------------------------------------------ run history


def test_run_now_honours_priority_and_expiry_and_is_a_manual_firing(
    env: BrokerEnv, schedules: Schedules
) -> None:
    schedules.add(interval("urgent", 3600, priority=9, expires_after=30))
    task_id = schedules.run_now("urgent", actor=ADMIN)

    client = redis.Redis.from_url(env.broker_url)
    queue = queue_name(SEND_IM, env.namespace)
    messages = [
        json.loads(raw) for key in redis_queue_keys(queue) for raw in client.lrange(key, 0, -1)
    ]
    (message,) = [m for m in messages if m["headers"]["id"] == task_id]
    expires = datetime.fromisoformat(message["headers"]["expires"])
    assert timedelta(seconds=25) < expires - datetime.now(UTC) <= timedelta(seconds=30)
    # Redis serves priority 0 first: the most urgent level (9) is stored as 0.
    assert message["properties"]["priority"] == 0
    (outcome,) = schedules.history("urgent")
    assert outcome.firing.manual and outcome.firing.slot is None
    assert outcome.firing.actor == ADMIN and outcome.status == "pending"


def test_history_reads_each_firing_outcome_from_the_result_backend(
    env: BrokerEnv, schedules: Schedules
) -> None:
    schedules.add(interval("report", 3600))
    ids = [schedules.run_now("report") for _ in range(4)]
    # What a worker writes to the result backend as each task ends.
    app = Celery("history-test", set_as_current=False)
    app.conf.update(base_config(env.settings))
    try:
        app.backend.mark_as_done(ids[0], {"sent": True})
        app.backend.mark_as_failure(ids[1], ValueError("url refused: 403"))
        app.backend.mark_as_revoked(ids[2], "expired")
    finally:
        app.close()

    outcomes = {o.firing.task_id: o for o in schedules.history("report")}
    assert [o.firing.task_id for o in schedules.history("report")] == ids[::-1]
    assert outcomes[ids[0]].status == "succeeded"
    assert outcomes[ids[1]].status == "dead-lettered"
    assert outcomes[ids[1]].error == "ValueError: url refused: 403"
    assert outcomes[ids[2]].status == "expired"
    assert outcomes[ids[3]].status == "pending"
    assert len(schedules.history("report", limit=2)) == 2


def test_removing_an_entry_drops_its_history_but_keeps_its_audit(schedules: Schedules) -> None:
    schedules.add(interval("report", 3600))
    schedules.run_now("report")
    schedules.remove("report")
    schedules.add(interval("report", 3600))
    assert schedules.history("report") == []
    assert [r.action for r in schedules.audit("report")] == ["created", "deleted", "ran", "created"]
