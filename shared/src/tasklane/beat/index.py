"""What the active Beat keeps in memory: every entry, its state, and a heap of when each is due.

A tick pops only the entries due and asks the store only for the entries changed since its last
look, so an idle tick costs the same few Redis commands with 10 or 10,000 entries.
Design and figures: docs/performance.md#12-beat-with-10000-entries.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from datetime import datetime

from tasklane.beat.models import EntryState, ScheduleEntry, next_slot
from tasklane.beat.store import ScheduleStore

#: Entries read from Redis per round trip on a full load; the lock is renewed between chunks.
LOAD_CHUNK = 500


class EntryIndex:
    """The store's entries, their state and problems, kept in step through its change feed."""

    def __init__(self, store: ScheduleStore) -> None:
        self._store = store
        self.entries: dict[str, ScheduleEntry] = {}
        self.states: dict[str, EntryState] = {}
        #: Why an entry cannot fire (contract gone, payload no longer fits), by name.
        self.problems: dict[str, str] = {}
        #: The store's version this copy reflects; -1 until the first load.
        self.version = -1
        # (due as Unix time, generation, name); an item is live while its generation is the
        # name's in _queued, so rescheduling never searches the heap.
        self._heap: list[tuple[float, int, str]] = []
        self._queued: dict[str, int] = {}
        self._generation = 0

    def clear(self) -> None:
        """Forget everything: the next :meth:`refresh` loads every entry."""
        self.entries.clear()
        self.states.clear()
        self.problems.clear()
        self._queued.clear()
        self._heap.clear()
        self.version = -1

    def refresh(self, now: datetime, keepalive: Callable[[], None]) -> list[str]:
        """Bring this copy in step with the store; the names read again (every name on a load).

        ``keepalive`` is called between the chunks of a full load (which may take seconds with
        many entries), so the caller can renew its lock.
        """
        if self.version < 0:
            return self._load_all(now, keepalive)
        version, names = self._store.changed_since(self.version)
        if version == self.version:
            return []
        if version < self.version or not names:
            # Redis lost its data (the version went back), the feed was trimmed past this
            # copy's version, or a writer moved the version without naming what it changed:
            # only a full load is sure to be right.
            return self._load_all(now, keepalive)
        self._read(names, now)
        self.version = version
        return names

    def pop_due(self, now: datetime) -> str | None:
        """The name of an entry due at ``now``, taken off the heap; None when none is."""
        moment = now.timestamp()
        while self._heap and self._heap[0][0] <= moment:
            _, generation, name = heapq.heappop(self._heap)
            if self._queued.get(name) == generation:
                del self._queued[name]
                return name
        return None

    def next_due(self) -> float | None:
        """When the soonest entry is due (Unix time), None if none will fire."""
        while self._heap and self._queued.get(self._heap[0][2]) != self._heap[0][1]:
            heapq.heappop(self._heap)  # a stale item: its entry was rescheduled or removed
        return self._heap[0][0] if self._heap else None

    def set_state(self, name: str, state: EntryState, now: datetime) -> None:
        """Record what happened to the entry (it fired, or another Beat fired it); reschedule."""
        if name in self.entries:
            self.states[name] = state
            self._schedule(name, now)

    # ------------------------------------------------------------------ internals

    def _load_all(self, now: datetime, keepalive: Callable[[], None]) -> list[str]:
        # The version first: a change made during the load is read again on the next refresh.
        version = self._store.version()
        entries = self._store.entries()
        self.clear()
        for start in range(0, len(entries), LOAD_CHUNK):
            chunk = entries[start : start + LOAD_CHUNK]
            states = self._store.states([entry.name for entry in chunk])
            for entry in chunk:
                self._put(entry, states[entry.name], now)
            keepalive()
        self.version = version
        return list(self.entries)

    def _read(self, names: Sequence[str], now: datetime) -> None:
        for start in range(0, len(names), LOAD_CHUNK):
            chunk = names[start : start + LOAD_CHUNK]
            entries = self._store.load_many(chunk)
            present = [name for name in chunk if entries[name] is not None]
            states = self._store.states(present)
            for name in chunk:
                entry = entries[name]
                if entry is None:
                    self._drop(name)
                else:
                    self._put(entry, states[name], now)

    def _put(self, entry: ScheduleEntry, state: EntryState, now: datetime) -> None:
        name = entry.name
        self.entries[name] = entry
        self.states[name] = state
        problem = self._store.problem(entry)
        if problem is None:
            self.problems.pop(name, None)
        else:
            self.problems[name] = problem
        self._schedule(name, now)

    def _drop(self, name: str) -> None:
        self.entries.pop(name, None)
        self.states.pop(name, None)
        self.problems.pop(name, None)
        self._queued.pop(name, None)

    def _schedule(self, name: str, now: datetime) -> None:
        entry = self.entries[name]
        upcoming = None if name in self.problems else next_slot(entry, self.states[name], now)
        if upcoming is None:
            self._queued.pop(name, None)
            return
        self._generation += 1
        self._queued[name] = self._generation
        heapq.heappush(self._heap, (upcoming.timestamp(), self._generation, name))
        if len(self._heap) > 2 * len(self._queued) + 1024:
            # Stale items pile up when entries are rescheduled before they are due.
            self._heap = [item for item in self._heap if self._queued.get(item[2]) == item[1]]
            heapq.heapify(self._heap)
