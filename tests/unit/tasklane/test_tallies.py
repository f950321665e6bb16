"""Batched task outcomes read back exactly as prometheus-client's own writes would."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

from tasklane.observability.tallies import RunSeries, Tallies

#: Written once through prometheus-client itself and once through Tallies, in a process of its
#: own whose metric files are the multiprocess ones a pool child writes.
WRITER = """
import random, sys
from prometheus_client import Counter, Histogram
from tasklane.observability.counters import RUNTIME_BUCKETS, WAIT_BUCKETS
from tasklane.observability.tallies import RunSeries, Tallies

# Bounds themselves, zero, past the last bound, and values in between.
rng = random.Random(7)
values = [0.0, *RUNTIME_BUCKETS, *WAIT_BUCKETS, 5000.0, *(rng.expovariate(2.0) for _ in range(500))]
runtime = Histogram("direct_seconds", "d", ["task"], buckets=RUNTIME_BUCKETS).labels("t")
wait = Histogram("direct_wait_seconds", "d", ["task"], buckets=WAIT_BUCKETS).labels("t")
succeeded = Counter("direct_done", "d", ["task"]).labels("t")
series = RunSeries(
    succeeded=Counter("batched_done", "b", ["task"]).labels("t"),
    queue_wait=Histogram("batched_wait_seconds", "b", ["task"], buckets=WAIT_BUCKETS).labels("t"),
    runtime=Histogram("batched_seconds", "b", ["task"], buckets=RUNTIME_BUCKETS).labels("t"),
)
tallies = Tallies(interval=3600)  # written by the calls below, not by its thread
for number, value in enumerate(values):
    # Every third run failed, every fifth had no publish time: neither counted where it is not.
    ok, waited = number % 3 != 0, (value / 2 if number % 5 else None)
    runtime.observe(value)
    if waited is not None:
        wait.observe(waited)
    if ok:
        succeeded.inc()
    tallies.run(series, waited, value, ok)
    if number == 100:
        tallies.flush()  # a write halfway: the rest adds to it
tallies.stop()
"""


def samples(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_batched_buckets_sums_and_counts_equal_prometheus_clients_own(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", WRITER], env=env, check=True, timeout=60)
    found = samples(tmp_path)

    def series(prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (name.removeprefix(prefix), labels): value
            for (name, labels), value in found.items()
            if name.startswith(prefix)
        }

    direct, batched = series("direct_"), series("batched_")
    assert direct.keys() == batched.keys()
    task = (("task", "t"),)
    # 0, the 16 and 14 bounds, 5000 and 500 more; 2 in 3 succeeded, 4 in 5 had a wait.
    assert direct[("seconds_count", task)] == 532
    assert direct[("done_total", task)] == 354
    assert direct[("wait_seconds_count", task)] == 425
    for key, value in direct.items():
        # Sums add the same values in another order: equal up to rounding.
        assert math.isclose(batched[key], value, rel_tol=1e-12), key


def test_a_forked_child_writes_only_its_own_tallies(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    script = """
import os
from prometheus_client import Counter, Histogram
from tasklane.observability.tallies import RunSeries, Tallies
series = RunSeries(
    succeeded=Counter("done", "d", ["task"]).labels("t"),
    queue_wait=Histogram("wait_seconds", "w", ["task"]).labels("t"),
    runtime=Histogram("run_seconds", "r", ["task"]).labels("t"),
)
tallies = Tallies(interval=3600)
tallies.run(series, 0.1, 0.2, True)  # the parent's, not yet written when it forks
pid = os.fork()
if pid == 0:
    tallies.run(series, 0.1, 0.2, True)
    tallies.stop()
    os._exit(0)
os.waitpid(pid, 0)
tallies.stop()
"""
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert samples(tmp_path)[("done_total", (("task", "t"),))] == 2


def test_a_forked_childs_task_recorder_records_into_the_childs_own_tallies(
    tmp_path: Path,
) -> None:
    # After its first run a process records with its queue's own append: a child must not
    # append to the queue it inherited, which no writer of the child's empties.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    script = """
import os
from tasklane.observability.metrics import TaskRecorder
class Task:
    name, queue = "t", "q"
recorder = TaskRecorder("svc", 0, None, [("t", "q")], exemplars=False)
task = Task()
def run():
    recorder.end(recorder.begin(task, {}), "SUCCESS", None)
run()  # the parent's first run: its recorder now holds the parent's append
pid = os.fork()
if pid == 0:
    run()
    recorder.child_exit()
    os._exit(0)
os.waitpid(pid, 0)
recorder.child_exit()
"""
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    succeeded = ("tasklane_tasks_succeeded_total", (("queue", "q"), ("task", "t")))
    assert samples(tmp_path)[succeeded] == 2


def test_threads_recording_their_first_tasks_at_once_lose_nothing() -> None:
    # As a threads pool does: every thread's first record may start the writer, and the writer
    # takes runs while the threads add them.
    registry = CollectorRegistry()
    series = RunSeries(
        succeeded=Counter("done", "d", ["task"], registry=registry).labels("t"),
        queue_wait=Histogram("wait_seconds", "w", ["task"], registry=registry).labels("t"),
        runtime=Histogram("run_seconds", "r", ["task"], registry=registry).labels("t"),
    )
    tallies = Tallies(interval=0.001)  # the writer runs while the threads count
    start = threading.Barrier(8)

    def record() -> None:
        start.wait()
        for _ in range(2_000):
            tallies.run(series, 0.01, 0.02, True)

    threads = [threading.Thread(target=record) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tallies.stop()
    assert registry.get_sample_value("done_total", {"task": "t"}) == 16_000
    assert registry.get_sample_value("wait_seconds_count", {"task": "t"}) == 16_000
    assert registry.get_sample_value("run_seconds_count", {"task": "t"}) == 16_000
