"""Exemplar files of pool processes, merged into the histogram buckets the server exposes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tasklane.observability.counters import RUNTIME_BUCKETS
from tasklane.observability.exemplars import ExemplarCollector, ExemplarRecorder, bucket_bound
from tasklane.observability.metrics import _sampled_ids

BUCKETS = (0.01, 0.1, 1.0)
LABELS = {"task": "notifier.im.send", "queue": "notifier.im"}


class OneHistogram(Collector):
    """Stands in for the multiprocess collector: one histogram family, labels sorted by name."""

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily("runtime_seconds", "Runtime.", labels=["queue", "task"])
        buckets = [("0.01", 1.0), ("0.1", 2.0), ("1.0", 3.0), ("+Inf", 3.0)]
        family.add_metric(["notifier.im", "notifier.im.send"], buckets, sum_value=0.7)
        yield family


def _exemplars(collector: Collector) -> dict[str, str]:
    (family,) = collector.collect()
    return {
        s.labels["le"]: s.exemplar.labels["trace_id"]
        for s in family.samples
        if s.exemplar is not None
    }


def test_bucket_bound_is_written_as_the_histogram_writes_le() -> None:
    assert bucket_bound(0.005, BUCKETS) == "0.01"
    assert bucket_bound(0.1, BUCKETS) == "0.1"
    assert bucket_bound(0.5, BUCKETS) == "1.0"
    assert bucket_bound(7.0, BUCKETS) == "+Inf"
    assert bucket_bound(0.0, BUCKETS) == "0.01"
    assert bucket_bound(float("nan"), BUCKETS) == "+Inf"  # at or under no bound


def test_newest_exemplar_per_bucket_across_processes(tmp_path: Path) -> None:
    first, second = ExemplarRecorder(tmp_path, pid=1_000_001), ExemplarRecorder(tmp_path, pid=2)
    first.observe("runtime_seconds", LABELS, BUCKETS, 0.005, "a" * 32, "1" * 16)
    first.observe("runtime_seconds", LABELS, BUCKETS, 0.5, "b" * 32, "2" * 16)
    second.observe("runtime_seconds", LABELS, BUCKETS, 0.007, "c" * 32, "3" * 16)
    collector = ExemplarCollector(OneHistogram(), tmp_path)
    assert _exemplars(collector) == {"0.01": "c" * 32, "1.0": "b" * 32}


def test_a_bucket_seen_before_is_rewritten_at_most_once_a_second(tmp_path: Path) -> None:
    recorder = ExemplarRecorder(tmp_path, pid=3)
    recorder.observe("runtime_seconds", LABELS, BUCKETS, 0.005, "a" * 32, "1" * 16)
    recorder.observe("runtime_seconds", LABELS, BUCKETS, 0.006, "b" * 32, "2" * 16)
    (row,) = json.loads(recorder.path.read_text())
    assert row[3] == "a" * 32  # the first exemplar of the bucket was written at once
    recorder.write()  # what the process does when it exits
    (row,) = json.loads(recorder.path.read_text())
    assert row[3] == "b" * 32


def test_exited_processes_files_are_folded_and_removed(tmp_path: Path) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    dead = ExemplarRecorder(tmp_path, pid=int(exited.stdout))
    dead.observe("runtime_seconds", LABELS, BUCKETS, 0.5, "d" * 32, "4" * 16)
    collector = ExemplarCollector(OneHistogram(), tmp_path)
    assert _exemplars(collector) == {"1.0": "d" * 32}
    assert not dead.path.exists()
    assert _exemplars(collector) == {"1.0": "d" * 32}  # kept in the server's memory


@given(st.floats(min_value=0.0, max_value=1e5, allow_nan=False))
def test_bucket_bound_is_the_bucket_the_histogram_counts_a_value_in(value: float) -> None:
    # prometheus-client counts an observation in the first bucket whose bound is at or above it.
    bounds = (*RUNTIME_BUCKETS, float("inf"))
    counted = next(bound for bound in bounds if value <= bound)
    assert bucket_bound(value, RUNTIME_BUCKETS) == floatToGoString(counted)


@given(
    trace_id=st.integers(0, 2**128 - 1),
    span_id=st.integers(0, 2**64 - 1),
    flags=st.integers(0, 255),
)
def test_a_runs_exemplar_ids_are_its_spans_as_the_api_writes_them(
    trace_id: int, span_id: int, flags: int
) -> None:
    context = SpanContext(trace_id, span_id, False, TraceFlags(flags))
    ids = _sampled_ids(NonRecordingSpan(context))
    if not context.is_valid or not context.trace_flags.sampled:
        assert ids is None
    else:
        assert ids == (trace.format_trace_id(trace_id), trace.format_span_id(span_id))
