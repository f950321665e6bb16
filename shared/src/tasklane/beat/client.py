"""Managing schedules from Python: the one place the CLI and the HTTP API go through.

A change is stored in Redis at once; the active Beat picks it up on its next tick.
Design: docs/beat.md#where-entries-come-from.
"""

from __future__ import annotations

import builtins
import threading
from datetime import UTC, datetime
from types import TracebackType

import redis

from tasklane.beat.models import ClockedSchedule, EntryView, ScheduleEntry
from tasklane.beat.store import BeatStatus, ScheduleError, ScheduleStore
from tasklane.contracts import REGISTRY, ContractRegistry
from tasklane.publish import Publisher
from tasklane.settings import Settings, load_settings
from tasklane.wire import headers


class Schedules:
    """Add, list, show, enable, disable, remove and run schedule entries."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: ContractRegistry = REGISTRY,
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self._client = redis.Redis.from_url(self.settings.require_state())
        self.store = ScheduleStore(
            self._client, namespace=self.settings.namespace, registry=registry
        )
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._publisher_lock = threading.Lock()

    def add(self, entry: ScheduleEntry, *, replace: bool = False) -> EntryView:
        """Validate and store an entry (``source="api"``); see :meth:`ScheduleStore.add`."""
        schedule = entry.schedule
        if isinstance(schedule, ClockedSchedule) and schedule.at <= datetime.now(UTC):
            raise ScheduleError(f"schedule.at: {schedule.at.isoformat()} is in the past")
        stored = self.store.add(entry.model_copy(update={"source": "api"}), replace=replace)
        return self.store.view(stored.name)

    def list(self) -> list[EntryView]:
        """Every entry with its state and next run."""
        return self.store.views()

    def show(self, name: str) -> EntryView:
        """One entry, or :class:`~tasklane.beat.store.ScheduleNotFoundError`."""
        return self.store.view(name)

    def enable(self, name: str) -> EntryView:
        """Let the entry fire again (from its next slot)."""
        self.store.set_enabled(name, True)
        return self.store.view(name)

    def disable(self, name: str) -> EntryView:
        """Stop the entry firing, keeping it."""
        self.store.set_enabled(name, False)
        return self.store.view(name)

    def remove(self, name: str) -> None:
        """Delete an entry made at run time."""
        self.store.remove(name)

    def run_now(self, name: str) -> str:
        """Publish the entry's task now, outside its schedule; returns the task id.

        Raises:
            ScheduleError: its contract is gone or its payload no longer fits.
        """
        entry = self.store.get(name)
        problem = self.store.problem(entry)
        if problem:
            raise ScheduleError(f"schedule {name!r} cannot run: {problem}")
        handle = self.publisher.publish(entry.task, entry.payload, headers={headers.SCHEDULE: name})
        self.store.record_manual_run(name, datetime.now(UTC))
        return handle.id

    def beats(self) -> builtins.list[BeatStatus]:
        """What every live Beat process last reported."""
        return self.store.statuses()

    @property
    def publisher(self) -> Publisher:
        """The publisher run-now uses (created on first use)."""
        with self._publisher_lock:  # the HTTP API calls this from several threads
            if self._publisher is None:
                self._publisher = Publisher(self.settings, registry=self.store.registry)
            return self._publisher

    def close(self) -> None:
        """Release connections."""
        if self._owns_publisher and self._publisher is not None:
            self._publisher.close()
        self._client.close()

    def __enter__(self) -> Schedules:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
