"""Claims of slots over a real Redis: a claim belongs to the Beat that wrote it, and may wait
for replicas (the shared Redis has none, so a claim that asks for one is never confirmed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasklane.beat.client import Schedules
from tasklane.beat.models import IntervalSchedule, ScheduleEntry
from tasklane.beat.store import ClaimsNotReplicatedError

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def test_a_slot_is_claimed_once_and_handed_back_only_to_its_claimer(
    schedules: Schedules,
) -> None:
    store = schedules.store
    assert store.claim_many([("tick", T0)], T0, claimer="beat-a") == [True]
    # Its answer lost on the way, beat A claims again: the slot is still its own, counted once.
    assert store.claim_many([("tick", T0)], T0, claimer="beat-a") == [True]
    assert store.state("tick").total_run_count == 1
    assert store.claim_many([("tick", T0)], T0, claimer="beat-b") == [False]
    assert store.claim("tick", T0, T0) is False  # no claimer: never a second time
    assert store.claim_many([("tick", T0 - timedelta(seconds=1))], T0, claimer="beat-a") == [False]
    later = T0 + timedelta(seconds=5)
    assert store.claim_many([("tick", later)], later, claimer="beat-b") == [True]
    assert store.claim_many([("tick", later)], later, claimer="beat-a") == [False]
    assert store.state("tick").total_run_count == 2


def test_a_passed_slot_is_nobody_s_claim(schedules: Schedules) -> None:
    store = schedules.store
    entry = ScheduleEntry(
        name="every5",
        task="notifier.im.send",
        payload={"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"},
        schedule=IntervalSchedule(every=5),
        start_at=T0,
    )
    store.add(entry, now=T0)
    assert store.claim_many([("every5", T0)], T0, claimer="beat-a") == [True]
    store.set_enabled("every5", False, now=T0 + timedelta(seconds=1))
    # Enabled again at +11 s: the slot at +10 s is marked passed, not fired by anyone.
    store.set_enabled("every5", True, now=T0 + timedelta(seconds=11))
    passed = T0 + timedelta(seconds=10)
    assert store.state("every5").last_slot == passed
    assert store.claim_many([("every5", passed)], passed, claimer="beat-a") == [False]


def test_a_claim_that_asks_for_a_replica_the_server_lacks_is_written_but_not_confirmed(
    schedules: Schedules,
) -> None:
    store = schedules.store
    with pytest.raises(ClaimsNotReplicatedError, match="0 of 1 replicas acknowledged 1 claimed"):
        store.claim_many([("tick", T0)], T0, claimer="beat-a", replicas=1, timeout=0.05)
    # On the master it is claimed: another Beat cannot have it, its claimer can try again.
    assert store.state("tick").last_slot == T0
    assert store.claim_many([("tick", T0)], T0, claimer="beat-b") == [False]
    assert store.claim_many([("tick", T0)], T0, claimer="beat-a") == [True]
    assert store.state("tick").total_run_count == 1
