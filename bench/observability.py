"""What observability costs a worker: throughput, /metrics scrape time and memory growth.

Run with ``make bench-observability`` (or ``.venv/bin/python bench/observability.py --help``).

1. **Throughput**, one run, one broker, the no-op task of ``bench/noop_service.py`` on a prefork
   pool of 2: bare Celery, Tasklane with metrics and tracing off, Tasklane with metrics on,
   metrics + tracing sampled at 10 %, metrics + tracing at 100 %. Spans go over OTLP/HTTP to a
   local receiver that reads and discards them (decoding them would compete for the CPU). Ratios
   are printed against bare Celery (the issue's baseline) and against Tasklane without
   observability (what metrics and tracing themselves cost).
2. **Long run**: Tasklane with metrics + 10 % tracing on a prefork pool of 4 runs 100,000 tasks.
   Worker RSS (main process + children) after a warm-up and at the end, and the time of a
   ``/metrics`` scrape (median and max of 20) at the end.

See ``docs/performance.md`` section 7 for the figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from run import (
    BARE,
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
    prefill,
    print_table,
    queue_depth,
    queue_of,
    running,
    throughput_run,
    wait_for,
)

from tasklane_dev.sinks import free_port

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- OTLP sink


@contextmanager
def span_sink() -> Iterator[tuple[str, list[int]]]:
    """An OTLP/HTTP endpoint that accepts every export and keeps only the request sizes."""
    sizes: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            sizes.append(len(self.rfile.read(length)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sizes
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


# --------------------------------------------------------------------------- 1. throughput


def variants(endpoint: str, multiproc: Path) -> list[tuple[Variant, bool]]:
    """The variants, each with whether it needs a fresh metrics directory and port per run."""
    return [
        (BARE, False),
        (TASKLANE, False),
        (Variant("obs.metrics", "Tasklane, metrics on", "tasklane"), True),
        (
            Variant(
                "obs.metrics_trace10",
                "Tasklane, metrics + tracing 10 %",
                "tasklane",
                tracing_env(endpoint, 0.1),
            ),
            True,
        ),
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


def bench_throughput(
    client: redis.Redis,
    opts: Options,
    endpoint: str,
    multiproc: Path,
    log_dir: Path,
    figures: dict[str, Figure],
) -> None:
    measured = variants(endpoint, multiproc)
    for variant, _ in measured:
        if variant is BARE:
            figures[variant.key] = Figure("throughput", variant.label, "tasks/s")
        else:
            figures[variant.key] = Figure(
                "throughput",
                variant.label,
                "tasks/s",
                baseline=BARE.key,
                target=0.95 if variant.key == "obs.metrics_trace10" else None,
                target_kind="ratio",
                notes="prefork -c 2",
            )
    for round_no in range(opts.rounds):
        for variant, metered in measured if round_no % 2 == 0 else measured[::-1]:
            run_variant = variant
            if metered:
                env = {**variant.env, **metrics_env(multiproc, free_port())}
                run_variant = Variant(variant.key, variant.label, variant.side, env)
            result = throughput_run(client, run_variant, opts, log_dir)
            figures[variant.key].values.append(result["tasks_per_s"])
            print(
                f"  round {round_no + 1} {variant.label:40s} {result['tasks_per_s']:7.0f} tasks/s"
                f", worker CPU {result['cpu_us_per_task']:.0f} us/task",
                flush=True,
            )
    cleanup(client)


# --------------------------------------------------------------------------- 2. long run


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
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 3)")
    parser.add_argument("--long-tasks", type=int, help="tasks of the long run (default 100000)")
    parser.add_argument("--only", choices=("throughput", "long"), help="run only this part")
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
            rounds=args.rounds or (1 if quick else 3),
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
        print(f"broker {url}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}", flush=True)
        try:
            with span_sink() as (endpoint, exports):
                if args.only in (None, "throughput"):
                    print(f"throughput: {opts.tasks} no-op tasks per run, prefork -c 2")
                    bench_throughput(client, opts, endpoint, work, work, figures)
                if args.only in (None, "long"):
                    print(f"long run: {long_tasks} tasks, prefork -c 4, metrics + tracing 10 %")
                    bench_long_run(client, opts, long_tasks, endpoint, work, work, figures)
                print(f"  span exports received: {len(exports)} ({sum(exports)} bytes)")
        except KeyboardInterrupt:
            print("interrupted; workers stopped", file=sys.stderr)
            return 130
        finally:
            cleanup(client)
    _print_observability_ratios(figures)
    print_table(figures)
    return 0


def _print_observability_ratios(figures: dict[str, Figure]) -> None:
    """Each variant against Tasklane without observability, and round by round against bare.

    This machine's speed drifts between rounds (a whole round can run slow); the ratio of two
    variants within one round cancels that drift, so its median over rounds is printed too.
    """
    plain = figures.get(TASKLANE.key)
    bare = figures.get(BARE.key)
    if plain is None or not plain.values:
        return
    for key in ("obs.metrics", "obs.metrics_trace10", "obs.metrics_trace100"):
        if key in figures and figures[key].values:
            ratio = figures[key].median / plain.median
            print(f"  {figures[key].name:40s} vs Tasklane without observability: {ratio:.3f}x")
    if bare is None or not bare.values:
        return
    for key in (TASKLANE.key, "obs.metrics", "obs.metrics_trace10", "obs.metrics_trace100"):
        if key in figures and len(figures[key].values) == len(bare.values):
            paired = [v / b for v, b in zip(figures[key].values, bare.values, strict=True) if b]
            print(
                f"  {figures[key].name:40s} vs bare Celery in the same round: median "
                f"{statistics.median(paired):.3f}x (min {min(paired):.3f}x, max {max(paired):.3f}x)"
            )


if __name__ == "__main__":
    sys.exit(main())
