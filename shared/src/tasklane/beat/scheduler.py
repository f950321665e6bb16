"""Beat: one active scheduler that publishes the schedule entries' tasks on time.

Run it with ``tasklane beat`` (``celery beat`` with :class:`TasklaneScheduler`). The Beat holding
the lock in Redis fires; the others wait in standby and take over when it dies.
Design: docs/beat.md#exactly-one-active-beat, docs/beat.md#where-entries-come-from.
"""

from __future__ import annotations

import logging
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

from tasklane.beat.models import (
    ClockedSchedule,
    EntryState,
    ScheduleEntry,
    due_slot,
    next_slot,
    slots_between,
)
from tasklane.beat.sources import entries_from_beat_schedule, entries_from_file, one_line
from tasklane.beat.store import BeatStatus, ScheduleStore, process_name
from tasklane.errors import TasklaneError
from tasklane.observability.health import BeatHealth
from tasklane.observability.metrics import serve_endpoints
from tasklane.observability.tracing import start_tracing, stop_tracing
from tasklane.publish import Publisher
from tasklane.settings import Settings, load, load_settings
from tasklane.wire import headers as wire_headers
from tasklane.wire.config import base_config

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


class TasklaneScheduler(Scheduler):  # type: ignore[misc]
    """A Celery Beat scheduler over :class:`~tasklane.beat.store.ScheduleStore`."""

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        # An app of the user's own (``tasklane beat --app``): settings from the environment.
        self.settings = app.settings if isinstance(app, BeatApp) else load_settings()
        self.beat_settings = load(BeatSettings)
        # A black-holed Redis fails the tick (not ready) instead of hanging it (not live).
        client = redis.Redis.from_url(
            self.settings.require_state(),
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
        )
        self.store = ScheduleStore(client, namespace=self.settings.namespace)
        self._publisher: Publisher | None = None
        self._tracing: TracerProvider | None = None
        self.process = process_name()
        self.holds_lock = False
        self.problems: dict[str, str] = {}
        self._entries: list[ScheduleEntry] = []
        self._version = -1
        self._file_stamp: tuple[float, int] | None = None
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
            serve_endpoints(self.settings.metrics_port, REGISTRY, self.health)
        sleep = self._poll_interval()
        try:
            sleep = self._tick_in_redis(now)
        except redis.RedisError as exc:
            # Raised out of tick, it would end `celery beat`: tick on and retry instead.
            self._lost_redis(exc)
        else:
            self._reached_redis()
        self._report_metrics(now)
        sleep = max(0.05, sleep)
        self.health.ticked(sleep, reached=self._unreachable is None, why=self._role())
        return sleep

    def sync(self) -> None:
        """Nothing to sync: every change is written to Redis as it happens."""

    def close(self) -> None:
        """Let the lock go, so a standby takes over at once."""
        try:
            if self.holds_lock:
                self.store.release_lock(self.process)
        except redis.RedisError:
            # Redis went away since the last tick: the lock's TTL lets a standby take over.
            logger.warning("beat %s: could not release the lock", self.process)
        finally:
            if self._publisher is not None:
                self._publisher.close()
            stop_tracing(self._tracing)  # the last firings' spans

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
        self._set_holds_lock(held)
        sleep = self._poll_interval()
        if held:
            self._sync_sources()
            self._reload()
            sleep = min(sleep, self._fire_due(now))
        self._report(now)
        return sleep

    def _set_holds_lock(self, held: bool) -> None:
        if held != self.holds_lock:
            logger.warning("beat %s %s the lock", self.process, "holds" if held else "lost")
        self.holds_lock = held

    def _lost_redis(self, exc: redis.RedisError) -> None:
        # Whether the lock is still ours is unknown: claim nothing until Redis answers again.
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
        if self.holds_lock:
            return "active: holds the lock"
        return "standby: connected, another Beat holds the lock"

    # -------------------------------------------------------------- firing

    def _fire_due(self, now: datetime) -> float:
        """Fire every due slot once; seconds until the next slot (capped by the poll interval)."""
        soonest = self._poll_interval()
        for entry in self._entries:
            if entry.name in self.problems or not entry.enabled:
                continue
            state = self.store.state(entry.name)
            slot = due_slot(entry, state, now)
            if slot is not None and self.store.claim(entry.name, slot, now):
                self._publish(entry, slot)
                self._count(entry, state, slot)
                state = self.store.state(entry.name)
            upcoming = next_slot(entry, state, now)
            if upcoming is not None:
                soonest = min(soonest, (upcoming - datetime.now(UTC)).total_seconds())
        return soonest

    def _publish(self, entry: ScheduleEntry, slot: datetime) -> None:
        headers = {wire_headers.SCHEDULE: entry.name, wire_headers.SLOT: slot.isoformat()}
        try:
            handle = self.publisher.publish(entry.task, entry.payload, headers=headers)
        except Exception:
            # The slot is claimed: it is not fired twice, and this one is lost (at most once).
            logger.exception("schedule %s: could not publish the slot %s", entry.name, slot)
            return
        logger.info("schedule %s: published %s[%s] for %s", entry.name, entry.task, handle.id, slot)
        if isinstance(entry.schedule, ClockedSchedule):
            self.store.set_enabled(entry.name, False)  # a one-off is done

    def _count(self, entry: ScheduleEntry, before: EntryState, slot: datetime) -> None:
        if self.metrics is None:
            return
        self.metrics.fired.labels(entry.name).inc()
        skipped = slots_between(entry, before.last_slot, slot)
        if skipped:
            self.metrics.missed.labels(entry.name).inc(skipped)

    # -------------------------------------------------------------- sources

    def _reload(self) -> None:
        version = self.store.version()
        if version == self._version:
            return
        entries = self.store.entries()
        problems = {e.name: p for e in entries if (p := self.store.problem(e)) is not None}
        for name, problem in problems.items():
            if self.problems.get(name) != problem:
                logger.error("schedule %s cannot fire: %s", name, problem)
        self.problems = {**self._source_problems, **problems}
        self._entries = entries
        self._version = version
        if self.metrics is not None:
            for entry in entries:  # series from 0, so the first fire or miss shows in rate()
                self.metrics.fired.labels(entry.name)
                self.metrics.missed.labels(entry.name)

    def _sync_sources(self) -> None:
        if not self._code_synced:
            self._sync("code", *entries_from_beat_schedule(self.app))
            self._code_synced = True
        path = self.beat_settings.schedule_file
        if path is None:
            return
        try:
            stat = path.stat()
        except OSError as exc:
            self._note_problem("file", f"{path}: {exc}")
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._file_stamp:
            self._sync("file", *entries_from_file(path))
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
            self.metrics.schedules.set(len(self._entries))
            self.metrics.lock_held.set(1 if self.holds_lock else 0)

    def _report(self, now: datetime) -> None:
        status = BeatStatus(
            process=self.process,
            last_tick=now,
            schedules=len(self._entries),
            holds_lock=self.holds_lock,
            problems={**self._source_problems, **self.problems},
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
