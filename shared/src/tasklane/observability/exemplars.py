"""Trace-id exemplars on histograms, across the processes of a prefork pool.

Each process writes the latest exemplar of every bucket to ``exemplars_<pid>.json`` beside the
metric files; the process serving ``/metrics`` attaches them to the aggregated bucket samples.
Design: docs/observability.md#exemplars-from-a-latency-spike-to-its-trace.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

FILE_PREFIX = "exemplars_"
#: Seconds between two writes of a process's file when no bucket is new.
WRITE_INTERVAL = 1.0

#: (metric name, its labels sorted by name, the bucket's bound as Prometheus writes it)
Key = tuple[str, tuple[tuple[str, str], ...], str]


class TraceExemplar(NamedTuple):
    """One observation that links a histogram bucket to the trace it came from."""

    trace_id: str
    span_id: str
    value: float
    timestamp: float


def bucket_bound(value: float, buckets: tuple[float, ...]) -> str:
    """The ``le`` label of the bucket ``value`` falls in (the first bound at or above it)."""
    if value != value:  # NaN is at or under no bound
        return "+Inf"
    return _le_labels(buckets)[bisect_left(buckets, value)]


@functools.cache
def _le_labels(buckets: tuple[float, ...]) -> tuple[str, ...]:
    # As the histogram writes its own ``le`` labels, so the two match exactly; written once
    # per set of buckets, not at each sampled run.
    labels = (str(floatToGoString(bound)) for bound in buckets)  # type: ignore[no-untyped-call]
    return (*labels, "+Inf")


class ExemplarRecorder:
    """This process's latest exemplar per bucket, written to its file in ``directory``."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.path = directory / f"{FILE_PREFIX}{self.pid}.json"
        self._latest: dict[Key, TraceExemplar] = {}
        self._written_at = 0.0
        self._dirty = False

    def observe(
        self,
        metric: str,
        labels: Mapping[str, str],
        buckets: tuple[float, ...],
        value: float,
        trace_id: str,
        span_id: str,
    ) -> None:
        key = (metric, tuple(sorted(labels.items())), bucket_bound(value, buckets))
        new_bucket = key not in self._latest
        self._latest[key] = TraceExemplar(trace_id, span_id, value, time.time())
        self._dirty = True
        if new_bucket or time.monotonic() - self._written_at >= WRITE_INTERVAL:
            self.write()

    def write(self) -> None:
        """Replace this process's file with what it holds (atomically: no reader sees half)."""
        if not self._dirty:
            return
        rows = [
            [metric, labels, bound, e.trace_id, e.span_id, e.value, e.timestamp]
            for (metric, labels, bound), e in self._latest.items()
        ]
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(rows))
        os.replace(partial, self.path)
        self._written_at = time.monotonic()
        self._dirty = False


def _read(path: Path) -> dict[Key, TraceExemplar]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # gone between listing and reading, or not ours
    found: dict[Key, TraceExemplar] = {}
    for metric, labels, bound, trace_id, span_id, value, timestamp in rows:
        pairs = tuple((str(name), str(label)) for name, label in labels)
        found[(metric, pairs, bound)] = TraceExemplar(trace_id, span_id, value, timestamp)
    return found


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (any user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest(into: dict[Key, TraceExemplar], found: dict[Key, TraceExemplar]) -> None:
    for key, exemplar in found.items():
        held = into.get(key)
        if held is None or exemplar.timestamp >= held.timestamp:
            into[key] = exemplar


class ExemplarCollector(Collector):
    """Wraps the multiprocess collector: its families, with the processes' exemplars attached.

    The exemplars of processes that have exited (recycled pool children) are folded into this
    collector's memory and their files removed, so the directory holds one file per live process.
    """

    def __init__(self, inner: Collector, directory: Path) -> None:
        self.inner = inner
        self.directory = directory
        self._retired: dict[Key, TraceExemplar] = {}
        self._lock = threading.Lock()  # scrapes run on the server's threads

    def exemplars(self) -> dict[Key, TraceExemplar]:
        """The newest exemplar of every bucket, over live and exited processes."""
        with self._lock:
            merged = dict(self._retired)
            for path in self.directory.glob(f"{FILE_PREFIX}*.json"):
                found = _read(path)
                _newest(merged, found)
                pid = path.stem.removeprefix(FILE_PREFIX)
                if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                    _newest(self._retired, found)
                    path.unlink(missing_ok=True)
            return merged

    def collect(self) -> Iterable[Metric]:
        exemplars = self.exemplars()
        for family in self.inner.collect():
            if family.type == "histogram" and exemplars:
                family.samples = [_with_exemplar(s, family, exemplars) for s in family.samples]
            yield family


def _with_exemplar(sample: Sample, family: Metric, exemplars: dict[Key, TraceExemplar]) -> Sample:
    if not sample.name.endswith("_bucket") or "le" not in sample.labels:
        return sample
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    found = exemplars.get((family.name, labels, sample.labels["le"]))
    if found is None:
        return sample
    exemplar = Exemplar(
        {"trace_id": found.trace_id, "span_id": found.span_id}, found.value, found.timestamp
    )
    return sample._replace(exemplar=exemplar)


def clear(directory: Path) -> None:
    """Remove the exemplar files of an earlier run of this worker."""
    for path in directory.glob(f"{FILE_PREFIX}*"):
        path.unlink(missing_ok=True)
