"""Task runs a process sums in memory and adds to its metric files twice a second.

prometheus-client's multiprocess mode writes each increment to the process's file at once, under
a lock and a process-id check: about ten Python calls per write, and a run records three (its
outcome, its queue wait, its runtime). A pool child instead queues each run's figures here, one
append a run, and a thread of its own sums them and writes the sums: one write per series per
interval, whatever the number of tasks.

What a process killed by SIGKILL had not written yet (at most the last :data:`FLUSH_INTERVAL`)
is lost with it. That a task started is counted by the worker's main process, which no task
runs in (:class:`tasklane.observability.metrics.StartedCounter`).
Design: docs/observability.md#worker-metrics.
"""

from __future__ import annotations

import collections
import os
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

#: Seconds between two writes of a process's sums.
FLUSH_INTERVAL = 0.5


class _HistogramSums:
    """Observations of one labelled histogram, counted per bucket until written."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        # The child's own bounds (+Inf last) and values: observe() writes those same cells, and
        # counts a value in the first bucket whose bound is at or above it (bisect_left).
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def write(self) -> None:
        for index, count in enumerate(self.counts):
            if count:
                self.child._buckets[index].inc(count)
                self.counts[index] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0


class RunSeries:
    """The series one task's runs add to: its successes, queue waits and runtimes.

    Each is a labelled child (``metric.labels(...)``) of a prometheus-client counter or histogram.
    """

    __slots__ = ("queue_wait", "runtime", "succeeded")

    def __init__(self, succeeded: Any, queue_wait: Any, runtime: Any) -> None:
        self.succeeded = succeeded
        self.queue_wait = queue_wait
        self.runtime = runtime


#: A run's figures: its series, queue wait (``None``: unknown), runtime and whether it succeeded.
Run = tuple[RunSeries, float | None, float, bool]


class _RunSums:
    """What the runs of one :class:`RunSeries` added since the last write."""

    __slots__ = ("queue_wait", "runtime", "succeeded")

    def __init__(self, queue_wait: _HistogramSums, runtime: _HistogramSums) -> None:
        self.succeeded = 0
        self.queue_wait = queue_wait
        self.runtime = runtime


class Tallies:
    """The task runs of this process, summed and written in batches.

    Safe to call from any thread; after a fork the child process starts from nothing (what it
    inherited is its parent's to write), and its first record starts its own writer thread.
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
        #: Runs not summed yet: appended by the tasks' threads, taken by the writer (a deque's
        #: append and popleft are atomic: no lock on a task's path).
        self._runs: collections.deque[Run] = collections.deque()
        self._sums_of: dict[RunSeries, _RunSums] = {}
        self._histograms: dict[Any, _HistogramSums] = {}
        self._writer: threading.Thread | None = None
        #: Records a run as :meth:`run` does, its figures as one tuple: after this process's
        #: first run, the queue's own ``append`` (one C call on a task's path).
        self.record: Callable[[Run], None] = self._record_first

    def run(self, series: RunSeries, wait: float | None, runtime: float, succeeded: bool) -> None:
        """A run ended: its queue wait (``None``: unknown), its runtime, whether it succeeded."""
        self.record((series, wait, runtime, succeeded))

    def _record_first(self, run: Run) -> None:
        # The process's first run starts its writer; later runs go straight to the queue.
        self._start()
        self.record = self._runs.append
        self._runs.append(run)

    def _run_sums(self, series: RunSeries) -> _RunSums:
        histograms = self._histograms
        for child in (series.queue_wait, series.runtime):
            if child not in histograms:
                histograms[child] = _HistogramSums(child)
        return _RunSums(histograms[series.queue_wait], histograms[series.runtime])

    def flush(self) -> None:
        """Write what was added since the last flush."""
        with self._lock:
            runs, sums_of = self._runs, self._sums_of
            while runs:
                series, wait, runtime, succeeded = runs.popleft()
                sums = sums_of.get(series)
                if sums is None:
                    sums = sums_of[series] = self._run_sums(series)
                # Inline: this loop sums every run of the process.
                if succeeded:
                    sums.succeeded += 1
                if wait is not None:
                    waits = sums.queue_wait
                    waits.counts[bisect_left(waits.bounds, wait)] += 1
                    waits.total += wait
                runtimes = sums.runtime
                runtimes.counts[bisect_left(runtimes.bounds, runtime)] += 1
                runtimes.total += runtime
            # Counters first: a reader that sees a task's runtime also sees how it ended.
            for run_series, sums in sums_of.items():
                if sums.succeeded:
                    run_series.succeeded.inc(sums.succeeded)
                    sums.succeeded = 0
            for histogram in self._histograms.values():
                histogram.write()

    def stop(self) -> None:
        """Write what is left and end the writer thread (a pool process about to exit)."""
        self._stopped.set()
        self.flush()

    def _start(self) -> None:
        with self._lock:
            # Two threads of a threads pool may record their first task at once.
            if self._writer is not None:
                return
            self._writer = threading.Thread(
                target=self._run, name="tasklane-metrics-writer", daemon=True
            )
            self._writer.start()

    def _run(self) -> None:
        stopped = self._stopped
        while not stopped.wait(self.interval):
            self.flush()
