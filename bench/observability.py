"""What observability costs a worker: CPU and throughput per task, /metrics scrape time, memory.

Run with ``make bench-observability`` (or ``.venv/bin/python bench/observability.py --help``).

1. **Throughput and CPU per task**, one run, one broker, the no-op task of
   ``bench/noop_service.py`` on a prefork pool of 2: bare Celery, Tasklane with metrics and
   tracing off, Tasklane with metrics on, metrics + tracing sampled at 10 %, metrics + tracing at
   100 %. Spans go over OTLP/HTTP to a local receiver that reads and discards them (decoding them
   would compete for the CPU). Each round runs every variant once, "metrics + tracing 10 %" right
   next to both of its baselines, so that the ratios the issue sets targets for are taken within
   one round (this machine's speed drifts between rounds) and their median over rounds is judged:

   * worker CPU per task, "metrics + tracing 10 %" against Tasklane without observability,
     target <= 1.05x. CPU is that of the worker's whole process group (main process, pool
     children, and any child already reaped), from the moment its first result is stored until
     every result is stored and the span exporters have sent what they held; divided by the
     tasks that finished in that span.
   * throughput, "metrics + tracing 10 %" against bare Celery, target >= 0.95x, judged only with
     at least 5 rounds.

2. **Side by side**: the two comparisons the issue sets targets for, each pair of workers
   running *at the same time* on queues of their own, both filled before either starts: "metrics
   + tracing 10 %" beside Tasklane without observability (CPU per task), and beside bare Celery
   (tasks/s). CPU and finished tasks are read for both at the moment both are busy and again when
   the first queue runs dry, so both figures of a pair cover the same seconds of the same machine.
   Runs one after another (part 1) swing by a third between rounds here as the host's speed
   drifts; two workers sharing the same seconds see the same drift. Each round gives one ratio per
   pair; the targets are judged on their median over at least 5 rounds.

3. **Long run**: Tasklane with metrics + 10 % tracing on a prefork pool of 4 runs 100,000 tasks.
   Worker RSS (main process + children) after a warm-up and at the end, and the time of a
   ``/metrics`` scrape (median and max of 20) at the end.

Only when asked (``--only``): **split**, each part of observability beside Tasklane without
it, its extra CPU per task split between the main process and the pool children, with a
calibration row (a known 50 µs of CPU in each run, nothing observed: how a pool child's
microsecond reads in the ratio); **alone**, each
part with its worker alone on the machine (prefork -c 1), and again with no run hooks
(``TASKLANE_BENCH_RUN_HOOKS=off`` in ``bench/noop_service.py``), to tell a part's hooks apart
from the rest of it.

See ``docs/performance.md`` section 7 for the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from run import (
    BARE,
    CLOCK_TICKS,
    EDGE,
    NAMESPACE,
    RESULT_PREFIX,
    TASKLANE,
    Figure,
    Options,
    Variant,
    Worker,
    all_succeeded,
    broker,
    cleanup,
    count_keys,
    done_at,
    prefill,
    print_table,
    queue_depth,
    queue_of,
    results,
    running,
    wait_for,
)

from tasklane_dev.sinks import free_port

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- OTLP sink


class SpanSink:
    """What an OTLP/HTTP endpoint that accepts and discards every export has received."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: Request body sizes, one per export.
        self.sizes: list[int] = []
        #: ``time.monotonic()`` of the latest export (0 before the first).
        self.last_export = 0.0

    def record(self, size: int) -> None:
        self.sizes.append(size)
        self.last_export = time.monotonic()

    def wait_settled(self, since: float, worker: Worker) -> None:
        """Until ``SETTLE_SECONDS`` passed since ``since`` and since the latest export.

        A pool child's batch span processor sends what it holds at most one schedule delay
        later; the CPU of those exports belongs to the tasks just timed.
        """
        wait_for(
            lambda: time.monotonic() - max(since, self.last_export) >= SETTLE_SECONDS,
            SETTLE_SECONDS + 120,
            "span exports to settle",
            worker,
            poll=0.1,
        )


@contextmanager
def span_sink() -> Iterator[SpanSink]:
    """An OTLP/HTTP endpoint on a free local port, for the duration of the block."""
    sink: SpanSink

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()
            sink.record(len(body))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink = SpanSink(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def metrics_env(multiproc: Path, port: int) -> dict[str, str]:
    directory = Path(tempfile.mkdtemp(prefix="metrics-", dir=multiproc))
    return {"TASKLANE_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def tracing_env(endpoint: str, ratio: float) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}",
    }


# --------------------------------------------------------------------------- worker CPU


def group_cpu_seconds(worker: Worker, stats: dict[int, list[str]] | None = None) -> float:
    """User + system CPU of the worker's process group, reaped children included.

    Each live process counts its own utime + stime and the cutime + cstime of the children it has
    reaped; a pool child that exits (and is replaced) moves from the first sum to its parent's
    second, so its CPU is neither lost nor counted twice.
    """
    ticks = 0
    for fields in (worker.group_stats() if stats is None else stats).values():
        # Fields after the command: utime, stime, cutime, cstime are the 14th to 17th of stat.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def finished(client: redis.Redis, keys: Sequence[str]) -> int:
    """How many of these result keys exist (a task's result is stored as it finishes)."""
    return int(client.exists(*keys))


# --------------------------------------------------------------------------- 1. throughput

#: The variant the issue sets targets for, and its two baselines.
TRACED = "obs.metrics_trace10"
CPU_TARGET = 1.05  # worker CPU per task, TRACED / TASKLANE, at most
THROUGHPUT_TARGET = 0.95  # tasks/s, TRACED / BARE, at least
MIN_ROUNDS = 5  # rounds the throughput ratio is judged on, at least
#: Quiet seconds after the last result (and export): OTel's batch schedule delay is 5 s.
SETTLE_SECONDS = 6.0


def variants(endpoint: str) -> list[tuple[Variant, bool]]:
    """The variants in a round's order, each with whether it needs its own metrics port and dir.

    "metrics + tracing 10 %" sits between bare Celery and Tasklane without observability, so it
    runs right after (or before) each of them in every round, whichever way the round goes.
    """
    return [
        (BARE, False),
        (
            Variant(
                TRACED, "Tasklane, metrics + tracing 10 %", "tasklane", tracing_env(endpoint, 0.1)
            ),
            True,
        ),
        (TASKLANE, False),
        (Variant("obs.metrics", "Tasklane, metrics on", "tasklane"), True),
        (
            Variant(
                "obs.metrics_trace100",
                "Tasklane, metrics + tracing 100 %",
                "tasklane",
                tracing_env(endpoint, 1.0),
            ),
            True,
        ),
    ]


def cpu_key(key: str) -> str:
    return f"cpu.{key}"


def timed_run(
    client: redis.Redis, variant: Variant, opts: Options, log_dir: Path, sink: SpanSink
) -> dict[str, float]:
    """One run: prefill, start a worker, time first to last result, and the group's CPU per task.

    Throughput is ``bench/run.py``'s: first to last ``date_done``, stamped by the worker as it
    stores each result. CPU starts once the first result is stored (start-up is not in it) and
    ends once every result is stored and span exports have settled; it is divided by the tasks
    that finished in between, counted from the results themselves.
    """
    side = variant.side
    cleanup(client)
    ids = prefill(side, opts.tasks)
    assert queue_depth(client, queue_of(side)) == opts.tasks
    keys = [f"{RESULT_PREFIX}{task_id}" for task_id in ids]
    worker = Worker(
        side, opts.broker_url, pool="prefork", concurrency=2, log_dir=log_dir, extra_env=variant.env
    )
    with running(worker):
        wait_for(
            lambda: bool(client.exists(keys[0])), 120, f"{variant.key} start", worker, poll=0.01
        )
        cpu_start = group_cpu_seconds(worker)
        done_start = finished(client, keys)
        # The cheap check first; counting every key each poll would take CPU from the worker.
        wait_for(lambda: all_succeeded(client, ids[-EDGE:]), 600, f"{variant.key} drain", worker)
        wait_for(
            lambda: finished(client, keys) >= opts.tasks,
            60,
            f"{variant.key}: all {opts.tasks} results",
            worker,
        )
        sink.wait_settled(time.monotonic(), worker)
        cpu_used = group_cpu_seconds(worker) - cpu_start
    first_done = min(done_at(m) for m in results(client, ids[:EDGE]))
    last_done = max(done_at(m) for m in results(client, ids[-EDGE:]))
    sample = results(client, ids[:: max(1, len(ids) // 50)])
    bad = [m for m in sample if m is None or m.get("status") != "SUCCESS"]
    if bad:
        raise RuntimeError(f"{variant.key}: {len(bad)} sampled results did not succeed: {bad[:3]}")
    elapsed = last_done - first_done
    timed = opts.tasks - done_start
    return {
        "tasks_per_s": (opts.tasks - 1) / elapsed,
        "seconds": elapsed,
        "cpu_us_per_task": cpu_used / max(1, timed) * 1e6,
        "cpu_tasks": float(timed),
    }


def bench_throughput(
    client: redis.Redis,
    opts: Options,
    sink: SpanSink,
    multiproc: Path,
    log_dir: Path,
    figures: dict[str, Figure],
) -> None:
    measured = variants(sink.url)
    for variant, _ in measured:
        plain = variant is BARE or variant is TASKLANE
        figures[variant.key] = Figure(
            "throughput",
            variant.label,
            "tasks/s",
            baseline=None if variant is BARE else BARE.key,
            notes="prefork -c 2",
        )
        figures[cpu_key(variant.key)] = Figure(
            "worker CPU per task",
            variant.label,
            "us",
            # Tasklane without observability against bare Celery; observability against it.
            baseline=None if variant is BARE else cpu_key(BARE.key if plain else TASKLANE.key),
            higher_is_better=False,
            notes="process group, prefork -c 2",
        )
    for round_no in range(opts.rounds):
        # Alternate the order so drift in the machine's load hits every variant alike.
        for variant, metered in measured if round_no % 2 == 0 else measured[::-1]:
            run_variant = variant
            if metered:
                env = {**variant.env, **metrics_env(multiproc, free_port())}
                run_variant = Variant(variant.key, variant.label, variant.side, env)
            result = timed_run(client, run_variant, opts, log_dir, sink)
            figures[variant.key].values.append(result["tasks_per_s"])
            figures[cpu_key(variant.key)].values.append(result["cpu_us_per_task"])
            print(
                f"  round {round_no + 1} {variant.label:36s} {result['tasks_per_s']:7.0f} tasks/s"
                f", worker CPU {result['cpu_us_per_task']:6.0f} us/task"
                f" (over {result['cpu_tasks']:.0f} tasks), load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    cleanup(client)


# --------------------------------------------------------------------------- 2. side by side


@dataclass(frozen=True)
class Side:
    """One worker of a side-by-side pair, on a queue of its own."""

    variant: Variant
    namespace: str
    metered: bool

    @property
    def queue(self) -> str:
        import noop_service as svc

        if self.variant.side == "bare":
            return svc.BARE_QUEUE_NAME
        return f"{self.namespace}{svc.NOOP.queue}"


@dataclass(frozen=True)
class Reading:
    """A worker's group CPU (and its main process's part) and finished tasks at one moment."""

    cpu: float
    main_cpu: float
    done: int
    at: float

    def per_task_since(self, start: Reading) -> tuple[int, float, float]:
        """Tasks finished since ``start``, and the group's and its main process's CPU a task
        (µs) over them."""
        tasks = self.done - start.done
        group = (self.cpu - start.cpu) / max(1, tasks) * 1e6
        return tasks, group, (self.main_cpu - start.main_cpu) / max(1, tasks) * 1e6


def prefill_side(side: Side, count: int) -> list[str]:
    """``count`` no-op messages in the side's own queue; returns their ids in order."""
    if side.variant.side == "bare":
        return prefill("bare", count)
    import noop_service as svc

    from tasklane.publish import Publisher

    settings = svc.settings.model_copy(update={"namespace": side.namespace})
    with Publisher(settings, registry=svc.BENCH_REGISTRY) as publisher:
        handles = publisher.publish_many(svc.NOOP, ({"n": i} for i in range(count)))
        return [handle.id for handle in handles]


def read(client: redis.Redis, worker: Worker, keys: Sequence[str]) -> Reading:
    stats = worker.group_stats()
    main = stats.get(worker.process.pid)
    # Its own utime + stime: pool children it reaped are the children's part.
    main_cpu = (int(main[11]) + int(main[12])) / CLOCK_TICKS if main else 0.0
    cpu = group_cpu_seconds(worker, stats)  # from the same reading of /proc as the main's part
    return Reading(cpu, main_cpu, finished(client, keys), time.monotonic())


def side_by_side(
    client: redis.Redis,
    pair: tuple[Side, Side],
    opts: Options,
    multiproc: Path,
    log_dir: Path,
) -> tuple[dict[str, float], dict[str, float]]:
    """Both workers of ``pair`` at once, each on its own full queue; per worker, CPU per task and
    tasks/s over the seconds both were busy: from both having stored a result until the first
    queue runs dry (both still hold prefetched tasks then).
    """
    cleanup(client)
    keys = []
    for side in pair:
        ids = prefill_side(side, opts.tasks)
        assert queue_depth(client, side.queue) == opts.tasks
        keys.append([f"{RESULT_PREFIX}{task_id}" for task_id in ids])
    workers = []
    for side in pair:
        env = {**side.variant.env, "TASKLANE_NAMESPACE": side.namespace}
        if side.metered:
            env.update(metrics_env(multiproc, free_port()))
        workers.append(
            Worker(
                side.variant.side,
                opts.broker_url,
                pool="prefork",
                concurrency=2,
                log_dir=log_dir,
                extra_env=env,
            )
        )
    try:
        for worker, side_keys, side in zip(workers, keys, pair, strict=True):
            first_key = side_keys[0]
            wait_for(
                lambda: bool(client.exists(first_key)),  # noqa: B023 (called in this iteration)
                120,
                f"{side.variant.key} start",
                worker,
                poll=0.01,
            )
        first = [read(client, w, k) for w, k in zip(workers, keys, strict=True)]
        wait_for(
            lambda: min(queue_depth(client, side.queue) for side in pair) == 0,
            600,
            "a queue to run dry",
            workers[0],
            poll=0.05,
        )
        last = [read(client, w, k) for w, k in zip(workers, keys, strict=True)]
        for worker, side_keys, side in zip(workers, keys, pair, strict=True):
            wait_for(
                lambda: finished(client, side_keys) >= opts.tasks,  # noqa: B023 (as above)
                600,
                f"{side.variant.key}: all {opts.tasks} results",
                worker,
            )
    finally:
        for worker in workers:
            worker.stop()
    figures = []
    for start, end in zip(first, last, strict=True):
        tasks, group_us, main_us = end.per_task_since(start)
        figures.append(
            {
                "cpu_us_per_task": group_us,
                "main_us_per_task": main_us,
                "tasks_per_s": tasks / (end.at - start.at),
                "tasks": float(tasks),
            }
        )
    return figures[0], figures[1]


def bench_side_by_side(
    client: redis.Redis, opts: Options, endpoint: str, multiproc: Path, log_dir: Path
) -> dict[str, list[float]]:
    """Rounds of both pairs; returns each pair's ratio per round."""
    traced = Variant(
        TRACED, "Tasklane, metrics + tracing 10 %", "tasklane", tracing_env(endpoint, 0.1)
    )
    pairs = {
        "cpu": (Side(traced, "perf.obs.", True), Side(TASKLANE, "perf.off.", False)),
        "throughput": (Side(traced, "perf.obs.", True), Side(BARE, NAMESPACE, False)),
    }
    ratios: dict[str, list[float]] = {"cpu": [], "throughput": []}
    for round_no in range(opts.rounds):
        for what, pair in pairs.items():
            # Which worker starts first alternates, so neither gets the head start every time.
            if round_no % 2 == 0:
                observed, baseline = side_by_side(client, pair, opts, multiproc, log_dir)
            else:
                baseline, observed = side_by_side(
                    client, (pair[1], pair[0]), opts, multiproc, log_dir
                )
            if what == "cpu":
                ratio = observed["cpu_us_per_task"] / baseline["cpu_us_per_task"]
            else:
                ratio = observed["tasks_per_s"] / baseline["tasks_per_s"]
            ratios[what].append(ratio)
            print(
                f"  round {round_no + 1} {pair[0].variant.label} beside {pair[1].variant.label}: "
                + "; ".join(
                    f"{side.variant.label} {figures['tasks_per_s']:.0f} tasks/s, "
                    f"CPU {figures['cpu_us_per_task']:.0f} us/task "
                    f"(over {figures['tasks']:.0f} tasks)"
                    for side, figures in zip(pair, (observed, baseline), strict=True)
                )
                + f"; {what} ratio {ratio:.3f}x",
                flush=True,
            )
    cleanup(client)
    return ratios


def bench_split(
    client: redis.Redis, opts: Options, endpoint: str, multiproc: Path, log_dir: Path
) -> None:
    """Where observability's CPU goes: each part beside Tasklane without it, main process apart.

    Each variant runs beside Tasklane without observability (as the CPU target's pair does);
    the extra CPU per task is split into the worker's main process (it receives, dispatches and
    acknowledges) and its pool children (they run the tasks and the hooks).
    """
    parts = [
        (Variant("split.metrics", "metrics", "tasklane"), True),
        (
            Variant("split.trace0", "tracing, ratio 0", "tasklane", tracing_env(endpoint, 0.0)),
            False,
        ),
        (
            # Everything of tracing but the observing of runs: its hooks' share of the row above.
            Variant(
                "split.trace0_unobserved",
                "tracing, ratio 0, no run hooks",
                "tasklane",
                {**tracing_env(endpoint, 0.0), "TASKLANE_BENCH_RUN_HOOKS": "off"},
            ),
            False,
        ),
        (Variant("split.trace10", "tracing 10 %", "tasklane", tracing_env(endpoint, 0.1)), False),
        (
            Variant("split.both", "metrics + tracing 10 %", "tasklane", tracing_env(endpoint, 0.1)),
            True,
        ),
        (
            # The target's variant without its sampled spans: what those spans cost is the
            # difference from the row above.
            Variant(
                "split.both_trace0",
                "metrics + tracing, ratio 0",
                "tasklane",
                tracing_env(endpoint, 0.0),
            ),
            True,
        ),
        (
            # The target's variant with nothing done per run: threads, files, providers, the
            # main process's part.
            Variant(
                "split.both_unobserved",
                "metrics + tracing 10 %, no run hooks",
                "tasklane",
                {**tracing_env(endpoint, 0.1), "TASKLANE_BENCH_RUN_HOOKS": "off"},
            ),
            True,
        ),
        (
            # Calibration: a known 50 us of CPU in each run, nothing observed. What it reads as
            # tells how a pool child's microsecond shows in the ratio.
            Variant(
                "split.work50",
                "no observability, 50 us of work",
                "tasklane",
                {"TASKLANE_BENCH_WORK_US": "50"},
            ),
            False,
        ),
    ]
    extra: dict[str, list[tuple[float, float, float]]] = {v.label: [] for v, _ in parts}
    for round_no in range(opts.rounds):
        for variant, metered in parts:
            pair = (Side(variant, "perf.obs.", metered), Side(TASKLANE, "perf.off.", False))
            if round_no % 2 == 0:
                observed, baseline = side_by_side(client, pair, opts, multiproc, log_dir)
            else:
                baseline, observed = side_by_side(
                    client, (pair[1], pair[0]), opts, multiproc, log_dir
                )
            main = observed["main_us_per_task"] - baseline["main_us_per_task"]
            children = (observed["cpu_us_per_task"] - observed["main_us_per_task"]) - (
                baseline["cpu_us_per_task"] - baseline["main_us_per_task"]
            )
            ratio = observed["cpu_us_per_task"] / baseline["cpu_us_per_task"]
            extra[variant.label].append((ratio, main, children))
            print(
                f"  round {round_no + 1} {variant.label:36} CPU ratio {ratio:.3f}x; per task:"
                f" main {main:+5.0f} us, children {children:+5.0f} us"
                f" (Tasklane without: main {baseline['main_us_per_task']:.0f},"
                f" children {baseline['cpu_us_per_task'] - baseline['main_us_per_task']:.0f})",
                flush=True,
            )
    cleanup(client)
    print("where the CPU goes, median over rounds (extra per task beside Tasklane without it):")
    for label, rows in extra.items():
        ratio, main, children = (statistics.median(column) for column in zip(*rows, strict=True))
        print(
            f"  {label:36} {ratio:.3f}x; main process {main:+.0f} us, pool children"
            f" {children:+.0f} us"
        )


def bench_alone(
    client: redis.Redis, opts: Options, endpoint: str, multiproc: Path, log_dir: Path
) -> None:
    """Each part with its worker alone on the machine (prefork -c 1), and again without its hooks.

    Side by side, two workers share two cores with Redis, and each part's cost grows with the
    sharing; alone, it is what the part's own processes pay. ``TASKLANE_BENCH_RUN_HOOKS=off``
    keeps all of a part (its threads, files, providers, imported code) but the observing of task
    runs, so the two rows of a part tell its hooks apart from the rest of it.
    """
    unobserved = {"TASKLANE_BENCH_RUN_HOOKS": "off"}
    trace0 = tracing_env(endpoint, 0.0)
    parts = [
        (TASKLANE, False),
        (Variant("alone.trace0", "tracing, ratio 0", "tasklane", trace0), False),
        (
            Variant(
                "alone.trace0_unobserved",
                "tracing, ratio 0, no run hooks",
                "tasklane",
                {**trace0, **unobserved},
            ),
            False,
        ),
        (Variant("alone.metrics", "metrics", "tasklane"), True),
        (
            Variant("alone.metrics_unobserved", "metrics, no run hooks", "tasklane", unobserved),
            True,
        ),
        (
            Variant("alone.both", "metrics + tracing 10 %", "tasklane", tracing_env(endpoint, 0.1)),
            True,
        ),
    ]
    rows: dict[str, list[tuple[float, float]]] = {v.label: [] for v, _ in parts}
    for round_no in range(opts.rounds):
        # The order turns every round, so that no part always runs first or last.
        for variant, metered in parts if round_no % 2 == 0 else parts[::-1]:
            side = Side(variant, "perf.alone.", metered)
            cleanup(client)
            keys = [f"{RESULT_PREFIX}{task_id}" for task_id in prefill_side(side, opts.tasks)]
            env = {**variant.env, "TASKLANE_NAMESPACE": side.namespace}
            if metered:
                env.update(metrics_env(multiproc, free_port()))
            worker = Worker(
                variant.side,
                opts.broker_url,
                pool="prefork",
                concurrency=1,
                log_dir=log_dir,
                extra_env=env,
            )
            try:
                wait_for(
                    lambda: bool(client.exists(keys[0])),  # noqa: B023 (called in this iteration)
                    120,
                    f"{variant.label} start",
                    worker,
                    poll=0.01,
                )
                first = read(client, worker, keys)
                wait_for(
                    lambda: queue_depth(client, side.queue) == 0,  # noqa: B023 (as above)
                    600,
                    "the queue to run dry",
                    worker,
                    poll=0.05,
                )
                last = read(client, worker, keys)
            finally:
                worker.stop()
            tasks, group, main = last.per_task_since(first)
            children = group - main
            rows[variant.label].append((main, children))
            print(
                f"  round {round_no + 1} {variant.label:32} main {main:4.0f} us, pool child"
                f" {children:4.0f} us a task ({tasks} tasks, load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    cleanup(client)
    medians = {
        label: tuple(statistics.median(column) for column in zip(*found, strict=True))
        for label, found in rows.items()
    }
    base_main, base_children = medians[TASKLANE.label]
    print(
        f"alone, median over rounds (Tasklane without observability: main {base_main:.0f} us,"
        f" pool child {base_children:.0f} us a task):"
    )
    for label, (main, children) in medians.items():
        if label != TASKLANE.label:
            ratio = (main + children) / (base_main + base_children)
            print(
                f"  {label:32} {ratio:.3f}x; main process {main - base_main:+.0f} us,"
                f" pool child {children - base_children:+.0f} us"
            )


def print_side_by_side_targets(ratios: dict[str, list[float]]) -> None:
    """The issue's two targets, judged on side-by-side ratios (median over rounds)."""
    print("targets, side by side (one ratio per round, median over rounds):")
    cpu = ratios["cpu"]
    print(
        "  worker CPU per task, metrics + tracing 10 % / Tasklane, observability off: "
        f"{_spread(cpu)}; target <= {CPU_TARGET}x: "
        + _verdict(cpu, statistics.median(cpu) <= CPU_TARGET)
    )
    rate = ratios["throughput"]
    print(
        "  throughput, metrics + tracing 10 % / bare Celery: "
        f"{_spread(rate)}; target >= {THROUGHPUT_TARGET}x: "
        + _verdict(rate, statistics.median(rate) >= THROUGHPUT_TARGET)
    )


def _verdict(ratios: Sequence[float], met: bool) -> str:
    if len(ratios) < MIN_ROUNDS:
        return f"not judged (needs {MIN_ROUNDS} rounds)"
    return "met" if met else "missed"


# --------------------------------------------------------------------------- 3. long run


def group_rss(worker: Worker) -> int:
    """Resident bytes of every process in the worker's process group."""
    total = 0
    for pid in worker.group_stats():
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue  # exited since
    return total


def scrape_seconds(port: int, times: int) -> list[float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": OPENMETRICS}
    )
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        seconds.append(time.perf_counter() - started)
    assert b"tasklane_task_runtime_seconds_bucket" in body
    return seconds


def done_count(client: redis.Redis) -> int:
    return count_keys(client, f"{RESULT_PREFIX}*")


def bench_long_run(
    client: redis.Redis,
    opts: Options,
    tasks: int,
    endpoint: str,
    multiproc: Path,
    log_dir: Path,
    figures: dict[str, Figure],
) -> None:
    cleanup(client)
    port = free_port()
    env = {**tracing_env(endpoint, 0.1), **metrics_env(multiproc, port)}
    warm_up = max(1000, tasks // 20)
    ids = prefill("tasklane", tasks)
    assert queue_depth(client, queue_of("tasklane")) == tasks
    worker = Worker(
        "tasklane", opts.broker_url, pool="prefork", concurrency=4, log_dir=log_dir, extra_env=env
    )
    with running(worker):
        wait_for(
            lambda: queue_depth(client, queue_of("tasklane")) <= tasks - warm_up,
            300,
            "warm-up",
            worker,
            poll=0.05,
        )
        rss_start = group_rss(worker)
        started = time.monotonic()
        wait_for(lambda: all_succeeded(client, ids[-8:]), 3600, "100k tasks", worker, poll=0.5)
        wait_for(lambda: done_count(client) >= tasks, 120, "every result", worker)
        elapsed = time.monotonic() - started
        rss_end = group_rss(worker)
        scrapes = scrape_seconds(port, 20)
    growth = (rss_end - rss_start) / rss_start
    figures["long.rss_growth"] = Figure(
        "long run",
        f"worker RSS growth, {tasks - warm_up} tasks after {warm_up} warm-up",
        "%",
        [growth * 100],
        higher_is_better=False,
        target=10.0,
        target_kind="absolute",
        notes=f"{rss_start / 2**20:.1f} MiB -> {rss_end / 2**20:.1f} MiB, prefork -c 4",
    )
    figures["long.scrape_median"] = Figure(
        "long run",
        f"/metrics scrape, 4 children, after {tasks} tasks (median of 20)",
        "ms",
        [statistics.median(scrapes) * 1000],
        higher_is_better=False,
        target=100.0,
        target_kind="absolute",
    )
    figures["long.scrape_max"] = Figure(
        "long run",
        "/metrics scrape, max of 20",
        "ms",
        [max(scrapes) * 1000],
        higher_is_better=False,
    )
    print(
        f"  {tasks} tasks, {tasks - warm_up} timed in {elapsed:.0f}s; RSS {rss_start / 2**20:.1f}"
        f" -> {rss_end / 2**20:.1f} MiB ({growth:+.1%}); scrape median "
        f"{statistics.median(scrapes) * 1000:.1f} ms, max {max(scrapes) * 1000:.1f} ms",
        flush=True,
    )
    cleanup(client)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="Redis broker URL (default: run.py's)")
    parser.add_argument("--quick", action="store_true", help="a smaller run for a quick check")
    parser.add_argument("--tasks", type=int, help="tasks per throughput run (default 10000)")
    parser.add_argument(
        "--rounds", type=int, help=f"throughput rounds (default {MIN_ROUNDS}, 1 with --quick)"
    )
    parser.add_argument("--long-tasks", type=int, help="tasks of the long run (default 100000)")
    parser.add_argument(
        "--only",
        choices=("throughput", "side-by-side", "split", "alone", "long"),
        help="run only this part (split and alone: where the CPU goes; run only when asked)",
    )
    return parser.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through every `finally` that stops a worker


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    quick = bool(args.quick)
    with broker(args.broker) as url:
        os.environ["TASKLANE_BROKER_URL"] = url
        os.environ["TASKLANE_NAMESPACE"] = NAMESPACE
        opts = Options(
            broker_url=url,
            tasks=args.tasks or (3_000 if quick else 10_000),
            rounds=args.rounds or (1 if quick else MIN_ROUNDS),
            pool="prefork",
            publish_tasks=0,
            bulk_tasks=0,
            latency_rate=0,
            latency_seconds=0,
            latency_rounds=0,
            only=(),
            json_path=None,
            keep_logs=False,
            ablation=False,
        )
        long_tasks = args.long_tasks or (10_000 if quick else 100_000)
        client = redis.Redis.from_url(url)
        figures: dict[str, Figure] = {}
        work = Path(tempfile.mkdtemp(prefix="tasklane-bench-obs-"))
        # Metric files in memory, as the chart mounts them (a disk-backed directory costs more).
        shm = Path("/dev/shm")
        multiproc = Path(
            tempfile.mkdtemp(prefix="tasklane-bench-metrics-", dir=shm if shm.is_dir() else None)
        )
        started = time.monotonic()
        print(
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, broker {url}, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}, load average {_load()} at the start",
            flush=True,
        )
        try:
            with span_sink() as sink:
                if args.only in (None, "throughput"):
                    print(f"throughput: {opts.tasks} no-op tasks per run, prefork -c 2")
                    bench_throughput(client, opts, sink, multiproc, work, figures)
                side_ratios: dict[str, list[float]] = {}
                if args.only in (None, "side-by-side"):
                    print(f"side by side: {opts.tasks} no-op tasks per worker, prefork -c 2 each")
                    side_ratios = bench_side_by_side(client, opts, sink.url, multiproc, work)
                if args.only == "split":
                    print(f"split: {opts.tasks} no-op tasks per worker, prefork -c 2 each")
                    bench_split(client, opts, sink.url, multiproc, work)
                if args.only == "alone":
                    print(f"alone: {opts.tasks} no-op tasks per run, one worker, prefork -c 1")
                    bench_alone(client, opts, sink.url, multiproc, work)
                if args.only in (None, "long"):
                    print(f"long run: {long_tasks} tasks, prefork -c 4, metrics + tracing 10 %")
                    bench_long_run(client, opts, long_tasks, sink.url, multiproc, work, figures)
                print(f"  span exports received: {len(sink.sizes)} ({sum(sink.sizes)} bytes)")
        except KeyboardInterrupt:
            print("interrupted; workers stopped", file=sys.stderr)
            return 130
        finally:
            cleanup(client)
            shutil.rmtree(multiproc, ignore_errors=True)
    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"took {minutes} min {seconds:02d} s; load average {_load()} at the end")
    _print_observability_ratios(figures)
    if figures:
        print_table(figures)
    _print_targets(figures)
    if side_ratios:
        print_side_by_side_targets(side_ratios)
    return 0


def _load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def paired(figures: dict[str, Figure], key: str, baseline: str) -> list[float]:
    """``key`` over ``baseline``, round by round: drift between rounds cancels within one."""
    if key not in figures or baseline not in figures:
        return []
    values, bases = figures[key].values, figures[baseline].values
    if len(values) != len(bases):
        return []
    return [value / base for value, base in zip(values, bases, strict=True) if base]


def _spread(ratios: Sequence[float]) -> str:
    return (
        f"median {statistics.median(ratios):.3f}x over {len(ratios)} rounds "
        f"({', '.join(f'{r:.3f}' for r in ratios)})"
    )


def _print_observability_ratios(figures: dict[str, Figure]) -> None:
    """Each variant's throughput and CPU against both baselines, paired round by round."""
    observed = (TASKLANE.key, "obs.metrics", TRACED, "obs.metrics_trace100")
    for key in observed:
        ratios = paired(figures, key, BARE.key)
        if ratios:
            print(f"  throughput {figures[key].name:36s} / bare Celery: {_spread(ratios)}")
    for key in observed[1:]:
        ratios = paired(figures, cpu_key(key), cpu_key(TASKLANE.key))
        if ratios:
            print(f"  worker CPU {figures[key].name:36s} / Tasklane off: {_spread(ratios)}")


def _print_targets(figures: dict[str, Figure]) -> None:
    """The issue's two targets, each judged on the median of ratios taken within a round."""
    if TRACED not in figures or not figures[TRACED].values:
        return
    name = figures[TRACED].name
    print("targets (ratio within each round, median over rounds):")
    cpu = paired(figures, cpu_key(TRACED), cpu_key(TASKLANE.key))
    cpu_median = statistics.median(cpu)
    print(
        f"  worker CPU per task, {name} / Tasklane, observability off: "
        f"{_spread(cpu)}; target <= {CPU_TARGET}x: "
        + ("met" if cpu_median <= CPU_TARGET else "missed")
    )
    rate = paired(figures, TRACED, BARE.key)
    rate_median = statistics.median(rate)
    if len(rate) < MIN_ROUNDS:
        verdict = f"not judged (needs {MIN_ROUNDS} rounds)"
    else:
        verdict = "met" if rate_median >= THROUGHPUT_TARGET else "missed"
    print(
        f"  throughput, {name} / bare Celery: {_spread(rate)}; "
        f"target >= {THROUGHPUT_TARGET}x: {verdict}"
    )


if __name__ == "__main__":
    sys.exit(main())
