"""Task outcomes a process sums in memory and adds to its metric files twice a second.

prometheus-client's multiprocess mode writes each increment to the process's file at once, under
a lock and a process-id check: about ten Python calls per write, five writes per task for the
outcome, queue wait and runtime. A pool child instead adds them up here, and a thread of its own
writes the sums: one write per series per interval, whatever the number of tasks.

What a process killed by SIGKILL had not written yet (at most the last :data:`FLUSH_INTERVAL`)
is lost with it; that a task started is still written at once, by the caller.
Design: docs/observability.md#worker-metrics.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from typing import Any

#: Seconds between two writes of a process's sums.
FLUSH_INTERVAL = 0.5


class _HistogramSums:
    """Observations of one labelled histogram, counted per bucket until written."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        # The child's own bounds (+Inf last) and values: observe() writes those same cells.
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, value: float) -> None:
        # observe() counts a value in the first bucket whose bound is at or above it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def write(self) -> None:
        for index, count in enumerate(self.counts):
            if count:
                self.child._buckets[index].inc(count)
                self.counts[index] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0


class Tallies:
    """Counter increments and histogram observations of this process, written in batches.

    ``child`` arguments are labelled metric children (``metric.labels(...)``) of prometheus-client
    counters and histograms. Safe to call from any thread; after a fork the child process starts
    from nothing (what it inherited is its parent's to write), and its first record starts its
    own writer thread.
    """

    def __init__(self, interval: float = FLUSH_INTERVAL) -> None:
        self.interval = interval
        self._forked()
        # A forked child inherits its parent's locks as they were (possibly held) and sums that
        # are its parent's to write: it starts afresh, right after the fork.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._counts: dict[Any, int] = {}
        self._histograms: dict[Any, _HistogramSums] = {}
        self._writer: threading.Thread | None = None

    def count(self, child: Any) -> None:
        """One more on a counter."""
        with self._lock:
            if self._writer is None:
                self._start()
            self._counts[child] = self._counts.get(child, 0) + 1

    def observe(self, child: Any, value: float) -> None:
        """One observation of a histogram."""
        with self._lock:
            if self._writer is None:
                self._start()
            sums = self._histograms.get(child)
            if sums is None:
                sums = self._histograms[child] = _HistogramSums(child)
            sums.add(value)

    def flush(self) -> None:
        """Write what was added since the last flush."""
        with self._lock:
            # Counters first: a reader that sees a task's runtime also sees how it ended.
            for child, count in self._counts.items():
                child.inc(count)
            self._counts.clear()
            for sums in self._histograms.values():
                sums.write()

    def stop(self) -> None:
        """Write what is left and end the writer thread (a pool process about to exit)."""
        self._stopped.set()
        self.flush()

    def _start(self) -> None:
        # Under the lock: two threads of a threads pool may record their first task at once.
        self._writer = threading.Thread(
            target=self._run, name="tasklane-metrics-writer", daemon=True
        )
        self._writer.start()

    def _run(self) -> None:
        stopped = self._stopped
        while not stopped.wait(self.interval):
            self.flush()
