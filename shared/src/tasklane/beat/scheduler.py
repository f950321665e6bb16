"""Beat: one active scheduler that publishes the schedule entries' tasks on time.

Run it with ``tasklane beat`` (``celery beat`` with :class:`TasklaneScheduler`). The Beat holding
the lock in Redis fires; the others wait in standby and take over when it dies.
Design: docs/beat.md#exactly-one-active-beat, docs/beat.md#where-entries-come-from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.beat import Scheduler
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.beat.index import EntryIndex
from tasklane.beat.models import (
    ClockedSchedule,
    EntryState,
    Firing,
    ScheduleEntry,
    due_slot,
    slots_between,
)
from tasklane.beat.sources import entries_from_beat_schedule, entries_from_file, one_line
from tasklane.beat.store import (
    BeatStatus,
    ClaimsNotReplicatedError,
    ScheduleStore,
    process_name,
)
from tasklane.errors import BrokerUnavailableError, TasklaneError
from tasklane.observability.health import BeatHealth
from tasklane.observability.metrics import serve_endpoints
from tasklane.observability.tracing import start_tracing, stop_tracing
from tasklane.publish import Publisher
from tasklane.settings import Settings, load, load_settings
from tasklane.wire import headers as wire_headers
from tasklane.wire.broker import redis_client
from tasklane.wire.config import base_config
from tasklane.wire.protocol import TaskMessage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)


class BeatSettings(BaseSettings):
    """Read from ``TASKLANE_BEAT_*``."""

    model_config = SettingsConfigDict(env_prefix="TASKLANE_BEAT_", extra="ignore", frozen=True)

    lock_ttl: float = Field(
        default=10.0,
        ge=1.0,
        le=300.0,
        description="Seconds the lock outlives its holder; a standby takes over within this.",
    )
    schedule_file: Path | None = Field(
        default=None, description="YAML schedule file, reloaded when it changes."
    )
    max_interval: float = Field(
        default=1.0, gt=0, le=60, description="Longest sleep between two ticks (seconds)."
    )
    liveness_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a tick may be overdue before /livez answers 503.",
    )


@dataclass(frozen=True)
class BeatMetrics:
    """What Beat exposes on ``TASKLANE_METRICS_PORT`` (one process: no multiprocess files)."""

    registry: CollectorRegistry
    last_tick: Gauge
    schedules: Gauge
    lock_held: Gauge
    fired: Counter
    missed: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> BeatMetrics:
        """Register Beat's metrics in ``registry``."""
        return cls(
            registry=registry,
            last_tick=Gauge(
                "tasklane_beat_last_tick_timestamp_seconds",
                "When this Beat process last ticked (Unix time).",
                registry=registry,
            ),
            schedules=Gauge(
                "tasklane_beat_schedules", "Schedule entries Beat knows.", registry=registry
            ),
            lock_held=Gauge(
                "tasklane_beat_lock_held", "1 while this Beat holds the lock.", registry=registry
            ),
            fired=Counter(
                "tasklane_beat_fired",
                "Slots published, by entry.",
                ("schedule",),
                registry=registry,
            ),
            missed=Counter(
                "tasklane_beat_missed",
                "Slots skipped because no Beat was active at their time, by entry.",
                ("schedule",),
                registry=registry,
            ),
        )


#: Seconds a Redis call of Beat may take; well under the liveness timeout.
REDIS_TIMEOUT = 5.0
#: Seconds of firing per tick at most: a burst of due slots goes on in the next tick, at once,
#: after the lock is renewed and the status reported.
FIRE_BUDGET = 0.05
#: Due slots claimed, published and recorded together: a round trip for each step, not per slot.
FIRE_BATCH = 100
#: Seconds a claim waits for replicas (TASKLANE_REDIS_WAIT_REPLICAS): within REDIS_TIMEOUT.
CLAIM_REPLICA_WAIT = 2.0


class _LockLost(Exception):
    """Another Beat took the lock while this one was loading its entries."""


class TasklaneScheduler(Scheduler):  # type: ignore[misc]
    """A Celery Beat scheduler over :class:`~tasklane.beat.store.ScheduleStore`."""

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        # An app of the user's own (``tasklane beat --app``): settings from the environment.
        self.settings = app.settings if isinstance(app, BeatApp) else load_settings()
        self.beat_settings = load(BeatSettings)
        # A black-holed Redis fails the tick (not ready) instead of hanging it (not live).
        client = redis_client(
            self.settings.require_state(),
            self.settings,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
        )
        self.store = ScheduleStore(client, namespace=self.settings.namespace)
        self._publisher: Publisher | None = None
        self._tracing: TracerProvider | None = None
        self.process = process_name()
        self.holds_lock = False
        self.index = EntryIndex(self.store)
        self._logged: dict[str, str] = {}  # the problem last logged, by entry
        self._renewed = 0.0  # monotonic time the lock was last renewed
        # Slots claimed (or being claimed) whose claim Redis has not confirmed: no answer came
        # back, or too few replicas have it. Not published; claimed again on the next tick.
        self._unconfirmed: dict[str, datetime] = {}
        self._replicas_behind: str | None = None  # why the last claims wait for replicas
        self._closed = False
        # The schedule file's (mtime, size) last synced; "none" once no file set was synced.
        self._file_stamp: tuple[float, int] | str | None = None
        self._code_synced = False
        self._source_problems: dict[str, str] = {}
        self.metrics: BeatMetrics | None = None
        self.health = BeatHealth(live_timeout=self.beat_settings.liveness_timeout)
        self._unreachable: str | None = None
        kwargs["max_interval"] = self.beat_settings.max_interval
        super().__init__(app, *args, **kwargs)

    # -------------------------------------------------------------- celery.beat.Scheduler API

    def setup_schedule(self) -> None:
        """Nothing to load yet: entries are read once this process holds the lock."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Keep or take the lock; when held, sync sources and fire what is due."""
        now = datetime.now(UTC)
        if self.metrics is None and self.settings.metrics_port is not None:
            # Here, not in __init__: `celery beat` also builds a scheduler just for its banner.
            # The default registry also holds what the publisher counts (tasks published).
            self.metrics = BeatMetrics.create(REGISTRY)
            serve_endpoints(
                self.settings.metrics_port, REGISTRY, self.health, self.settings.metrics_address
            )
        sleep = self._poll_interval()
        try:
            sleep = self._tick_in_redis(now)
        except redis.RedisError as exc:
            # Raised out of tick, it would end `celery beat`: tick on and retry instead.
            self._lost_redis(exc)
        else:
            self._reached_redis()
        self._report_metrics(now)
        # 0: slots are due already (left over from a full tick, or due while it ran): tick
        # again at once. The heap only holds slots after the tick that scheduled them, so this
        # never spins on one; under a millisecond is not worth a sleep.
        sleep = 0.0 if sleep < 0.001 else sleep
        self.health.ticked(sleep, reached=self._unreachable is None, why=self._role())
        return sleep

    def sync(self) -> None:
        """Nothing to sync: every change is written to Redis as it happens."""

    def close(self) -> None:
        """Let the lock go and withdraw this Beat's status, so a standby takes over at once.

        ``celery beat`` calls this from its SIGTERM/SIGINT handler and again as its loop ends.
        """
        if self._closed:
            return
        self._closed = True
        try:
            # Unconditional: a signal may have cut the tick that took the lock short of noting
            # it. Releasing is a no-op unless this process holds it.
            self.store.release_lock(self.process)
            self.store.clear_status(self.process)
        except redis.RedisError:
            # Redis went away since the last tick: the lock's TTL lets a standby take over, and
            # the status expires.
            logger.warning("beat %s: could not release the lock", self.process)
        finally:
            self.holds_lock = False
            if self._publisher is not None:
                self._publisher.close()
            stop_tracing(self._tracing)  # the last firings' spans

    @property
    def entries(self) -> Mapping[str, ScheduleEntry]:
        """The entries this Beat holds in memory (none in standby), by name."""
        return self.index.entries

    @property
    def problems(self) -> dict[str, str]:
        """Why entries or sources cannot fire, by entry name or ``<source>[:<entry>]``."""
        return {**self._source_problems, **self.index.problems}

    @property
    def info(self) -> str:
        """Shown in ``celery beat``'s banner."""
        file = self.beat_settings.schedule_file or "none"
        return f"    . lock TTL -> {self.beat_settings.lock_ttl:g}s\n    . schedule file -> {file}"

    @property
    def publisher(self) -> Publisher:
        """Made on first use: `celery beat` also builds a scheduler only to print its banner.

        With ``OTEL_*`` set, tracing starts with it: each firing is a PRODUCER span that the
        worker's run continues (service ``tasklane-beat``).
        """
        if self._publisher is None:
            self._tracing = start_tracing("beat")
            self._publisher = Publisher(self.settings)
        return self._publisher

    # -------------------------------------------------------------- one tick

    def _tick_in_redis(self, now: datetime) -> float:
        """Every Redis step of a tick; seconds until the next (raises ``RedisError``)."""
        held = self.store.hold_lock(self.process, self.beat_settings.lock_ttl)
        self._renewed = time.monotonic()
        self._set_holds_lock(held)
        sleep = self._poll_interval()
        if held:
            self._sync_sources()
            try:
                self._reload(now)
            except _LockLost:
                self._set_holds_lock(False)
            else:
                sleep = min(sleep, self._fire_due(now))
        self._report(now)
        return sleep

    def _set_holds_lock(self, held: bool) -> None:
        if held != self.holds_lock:
            logger.warning("beat %s %s the lock", self.process, "holds" if held else "lost")
        if not held:
            # Another Beat fires meanwhile: what this one remembers goes stale. Loaded afresh
            # when it holds the lock again; a standby keeps nothing.
            self.index.clear()
        self.holds_lock = held

    def _keep_lock(self) -> None:
        """Renew the lock during a long load; raise :class:`_LockLost` if it is gone."""
        if time.monotonic() - self._renewed < self._poll_interval():
            return
        self._renewed = time.monotonic()
        if not self.store.hold_lock(self.process, self.beat_settings.lock_ttl):
            raise _LockLost

    def _lost_redis(self, exc: redis.RedisError) -> None:
        # Whether the lock is still ours is unknown: claim nothing until Redis answers again.
        # (Redis may come back empty: the entries are loaded afresh.)
        self._set_holds_lock(False)
        problem = f"{type(exc).__name__}: {one_line(exc)}"
        if self._unreachable is None:
            logger.error(
                "beat %s: Redis unreachable, retrying each tick: %s", self.process, problem
            )
        self._unreachable = problem

    def _reached_redis(self) -> None:
        if self._unreachable is not None:
            logger.warning("beat %s: Redis reachable again", self.process)
        self._unreachable = None

    def _role(self) -> str:
        if self._unreachable is not None:
            return f"Redis unreachable: {self._unreachable}"
        if self.holds_lock and self._replicas_behind is not None:
            return f"active: holds the lock; claims wait for replicas: {self._replicas_behind}"
        if self.holds_lock:
            return "active: holds the lock"
        return "standby: connected, another Beat holds the lock"

    # -------------------------------------------------------------- firing

    def _fire_due(self, now: datetime) -> float:
        """Fire the entries due at ``now``; seconds until the next is (capped by the poll).

        Only the due entries are touched (a heap of next slots), so the cost of a tick follows
        what fires, not how many entries there are. 0 when the budget ran out with slots left.
        """
        deadline = time.monotonic() + FIRE_BUDGET
        if self._unconfirmed and not self._fire([], now):
            return self._poll_interval()
        while slots := self._take_due(now, deadline):
            if not self._fire(slots, now):
                return self._poll_interval()
            if time.monotonic() >= deadline:
                return 0.0
        upcoming = self.index.next_due()
        if upcoming is None:
            return self._poll_interval()
        return max(0.0, min(self._poll_interval(), upcoming - time.time()))

    def _take_due(self, now: datetime, deadline: float) -> list[tuple[str, datetime]]:
        """Up to :data:`FIRE_BATCH` due entries with the slot each fires (fewer at the
        deadline: working out a slot is most of a firing's cost)."""
        slots: list[tuple[str, datetime]] = []
        while (
            len(slots) < FIRE_BATCH
            and time.monotonic() < deadline
            and (name := self.index.pop_due(now)) is not None
        ):
            state = self.index.states[name]
            slot = due_slot(self.index.entries[name], state, now)
            if slot is None:  # nothing due after all (e.g. past its expiry): reschedule
                self.index.set_state(name, state, now)
            else:
                slots.append((name, slot))
        return slots

    def _fire(self, slots: list[tuple[str, datetime]], now: datetime) -> bool:
        """Claim the slots, publish those claimed, record them in each entry's run history.

        Claims left unconfirmed by an earlier tick go again with these (the store hands a slot
        back to the Beat that claimed it); a later slot of the same entry replaces one.
        False when the claims wait for replicas: nothing was published.
        """
        pending = {n: s for n, s in self._unconfirmed.items() if n in self.index.entries}
        for name, slot in slots:
            if name not in pending or slot > pending[name]:
                pending[name] = slot
        slots = list(pending.items())
        # Until Redis answers: a claim cut off on the way is claimed again next tick.
        self._unconfirmed = dict(slots)
        if not slots:
            return True
        try:
            claims = self.store.claim_many(
                slots,
                now,
                claimer=self.process,
                replicas=self.settings.redis_wait_replicas,
                timeout=min(CLAIM_REPLICA_WAIT, self.beat_settings.lock_ttl / 4),
            )
        except ClaimsNotReplicatedError as exc:
            self._wait_for_replicas(slots, now, exc)
            return False
        self._unconfirmed.clear()
        if self._replicas_behind is not None:
            logger.warning("beat %s: the replicas have the claims again", self.process)
            self._replicas_behind = None
        # Another Beat fired these slots or later ones (its lock ran out under it): learn what.
        taken = [name for (name, _), claimed in zip(slots, claims, strict=True) if not claimed]
        for name, state in self.store.states(taken).items():
            self.index.set_state(name, state, now)
        fired: list[tuple[ScheduleEntry, datetime]] = []
        for (name, slot), claimed in zip(slots, claims, strict=True):
            if claimed:
                before = self.index.states[name]
                # What the claim wrote: the slot, the time, one more run.
                after = EntryState(
                    last_run_at=now, total_run_count=before.total_run_count + 1, last_slot=slot
                )
                self.index.set_state(name, after, now)
                fired.append((self.index.entries[name], slot))
                self._count(self.index.entries[name], before, slot)
        self.store.record_firings(self._publish(fired))
        for entry, _ in fired:
            if isinstance(entry.schedule, ClockedSchedule):
                self.store.set_enabled(entry.name, False)  # a one-off is done
        return True

    def _wait_for_replicas(
        self, slots: list[tuple[str, datetime]], now: datetime, exc: ClaimsNotReplicatedError
    ) -> None:
        """The claims are on the master only: publish nothing, claim them again next tick.

        A failover now could forget them and fire the slots a second time.
        """
        for name, slot in slots:
            # Not due again: the retry of the claim fires it.
            claimed = self.index.states[name].model_copy(update={"last_slot": slot})
            self.index.set_state(name, claimed, now)
        problem = one_line(exc)
        if self._replicas_behind is None:
            logger.error(
                "beat %s: %s; not firing them until the replicas have them", self.process, problem
            )
        self._replicas_behind = problem

    def _publish(self, fired: list[tuple[ScheduleEntry, datetime]]) -> list[tuple[str, Firing]]:
        """Publish claimed slots, a pipeline per task; the firings the broker took.

        A slot that is not published is lost, logged, never retried: it is claimed, so it is
        not fired twice (at most once).
        """
        by_task: dict[str, list[tuple[ScheduleEntry, datetime, TaskMessage]]] = {}
        for entry, slot in fired:
            headers = {wire_headers.SCHEDULE: entry.name, wire_headers.SLOT: slot.isoformat()}
            try:
                message = self.publisher.encode(
                    entry.task,
                    entry.payload,
                    priority=entry.priority,
                    expires=entry.expires_after,
                    headers=headers,
                )
            except Exception:
                logger.exception("schedule %s: could not publish the slot %s", entry.name, slot)
                continue
            by_task.setdefault(entry.task, []).append((entry, slot, message))
        firings: list[tuple[str, Firing]] = []
        for task, items in by_task.items():
            try:
                self.publisher.send(task, [message for _, _, message in items])
                sent = len(items)
            except BrokerUnavailableError as exc:
                sent = exc.sent
                logger.error(
                    "beat: %d of %d %s firings not sent: %s",
                    len(items) - sent,
                    len(items),
                    task,
                    exc,
                )
            except Exception:
                sent = 0
                logger.exception("beat: %d %s firings not sent", len(items), task)
            fired_at = datetime.now(UTC)
            for entry, slot, message in items[:sent]:
                logger.info(
                    "schedule %s: published %s[%s] for %s", entry.name, task, message.task_id, slot
                )
                firings.append(
                    (entry.name, Firing(task_id=message.task_id, fired_at=fired_at, slot=slot))
                )
            for entry, slot, _ in items[sent:]:
                logger.error("schedule %s: could not publish the slot %s", entry.name, slot)
        return firings

    def _count(self, entry: ScheduleEntry, before: EntryState, slot: datetime) -> None:
        if self.metrics is None:
            return
        self.metrics.fired.labels(entry.name).inc()
        # Slots between the last fired (or passed: enabling passes the slots of the time the
        # entry was disabled) and this one went by while no Beat was firing.
        skipped = slots_between(entry, before.last_slot, slot)
        if skipped:
            self.metrics.missed.labels(entry.name).inc(skipped)

    # -------------------------------------------------------------- sources

    def _reload(self, now: datetime) -> None:
        """Read back the entries changed since the last tick (every entry on the first)."""
        changed = self.index.refresh(now, keepalive=self._keep_lock)
        for name in changed:
            problem = self.index.problems.get(name)
            if problem is None:
                self._logged.pop(name, None)
            elif self._logged.get(name) != problem:
                logger.error("schedule %s cannot fire: %s", name, problem)
                self._logged[name] = problem
            if self.metrics is not None and name in self.index.entries:
                # Series from 0, so the first fire or miss shows in rate().
                self.metrics.fired.labels(name)
                self.metrics.missed.labels(name)

    def _sync_sources(self) -> None:
        if not self._code_synced:
            self._sync("code", *entries_from_beat_schedule(self.app))
            self._code_synced = True
        path = self.beat_settings.schedule_file
        if path is None:
            if self._file_stamp != "none":  # no file declares no entries: the file's go
                self._sync("file", [], {})
                self._file_stamp = "none"
            return
        try:
            stat = path.stat()
        except OSError as exc:
            self._note_problem("file", f"{path}: {exc}")
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._file_stamp:
            return
        entries, problems = entries_from_file(path)
        if "file" in problems:
            # Unreadable or not a schedule file (a volume half mounted): its entries keep
            # firing as they were, and it is read again on the next tick.
            self._note_problem("file", problems["file"])
            return
        self._sync("file", entries, problems)
        self._file_stamp = stamp

    def _sync(self, source: str, entries: list[ScheduleEntry], problems: dict[str, str]) -> None:
        try:
            removed = self.store.sync_source(source, entries)  # type: ignore[arg-type]
        except TasklaneError as exc:
            problems = {**problems, source: str(exc)}
            removed = []
        self._source_problems = {
            **{k: v for k, v in self._source_problems.items() if not k.startswith(source)},
            **problems,
        }
        for name, problem in problems.items():
            logger.error("schedule %s: %s", name, problem)
        logger.info(
            "beat: %d %s schedule(s) loaded, %d removed", len(entries), source, len(removed)
        )

    def _note_problem(self, key: str, problem: str) -> None:
        if self._source_problems.get(key) != problem:
            logger.error("schedule source %s: %s", key, problem)
        self._source_problems = {**self._source_problems, key: problem}

    # -------------------------------------------------------------- status

    def _poll_interval(self) -> float:
        # Renew the lock several times per TTL, so one slow tick does not lose it.
        return min(self.beat_settings.max_interval, self.beat_settings.lock_ttl / 4)

    def _report_metrics(self, now: datetime) -> None:
        if self.metrics is not None:
            self.metrics.last_tick.set(now.timestamp())
            self.metrics.schedules.set(len(self.index.entries))
            self.metrics.lock_held.set(1 if self.holds_lock else 0)

    def _report(self, now: datetime) -> None:
        status = BeatStatus(
            process=self.process,
            last_tick=now,
            schedules=len(self.index.entries),
            holds_lock=self.holds_lock,
            problems=self.problems,
        )
        self.store.report(status, ttl=max(30.0, 3 * self.beat_settings.lock_ttl))


class BeatApp(Celery):  # type: ignore[misc]
    """The default Beat app: Tasklane's base configuration, its settings a typed attribute."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("tasklane-beat", set_as_current=False)
        self.settings = settings
        self.conf.update(
            base_config(settings), beat_scheduler="tasklane.beat.scheduler:TasklaneScheduler"
        )


def create_beat_app(settings: Settings | None = None) -> BeatApp:
    """The Celery app ``tasklane beat`` runs when no other is given."""
    return BeatApp(settings or load_settings())
