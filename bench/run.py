"""Tasklane benchmarks against bare Celery: throughput, publish rate, publish-to-start latency.

Run with ``make bench`` (or ``.venv/bin/python bench/run.py --help``). Every benchmark runs in this
one process against one broker; figures are medians over rounds, printed with their ratio against
the bare-Celery baseline. See ``docs/performance.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import redis

BENCH_DIR = Path(__file__).resolve().parent
# The worker subprocesses import noop_service from here; so does this process.
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/12"
NAMESPACE = "perf."
RESULT_PREFIX = "celery-task-meta-"
LATENCY_KEY = f"{NAMESPACE}bench.latency"
#: The list the raw-LPUSH baseline pushes onto (deleted after).
RAW_LIST = f"{NAMESPACE}bench.raw"
#: Results read at each end of a throughput run: the first and last few tasks bound its duration.
EDGE = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Side = Literal["bare", "tasklane"]
SIDES: tuple[Side, Side] = ("bare", "tasklane")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """What to run, and how much of it."""

    broker_url: str
    tasks: int
    rounds: int
    pool: str
    publish_tasks: int
    bulk_tasks: int
    latency_rate: float
    latency_seconds: float
    latency_rounds: int
    only: tuple[str, ...]
    json_path: Path | None
    keep_logs: bool
    ablation: bool


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help=f"Redis broker URL (default: {DEFAULT_BROKER_URL})")
    parser.add_argument("--quick", action="store_true", help="a smaller run for a quick check")
    parser.add_argument("--tasks", type=int, help="tasks per throughput run (default 10000)")
    parser.add_argument("--rounds", type=int, help="rounds of throughput and publish (default 3)")
    parser.add_argument(
        "--pool",
        choices=("solo", "prefork"),
        default="solo",
        help="throughput worker pool: solo (-c 1, default) or prefork (-c 2)",
    )
    parser.add_argument("--publish-tasks", type=int, help="single-publish messages (20000)")
    parser.add_argument("--bulk-tasks", type=int, help="publish_many messages (100000)")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="tasks/s (100)")
    parser.add_argument("--latency-seconds", type=float, help="seconds per window (10)")
    parser.add_argument("--latency-rounds", type=int, help="windows per side (2)")
    parser.add_argument(
        "--only",
        action="append",
        choices=("throughput", "publish", "latency"),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="also write figures here")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also measure Tasklane with events, track_started, result_extended, acks_late off",
    )
    parser.add_argument("--keep-logs", action="store_true", help="print worker log paths")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace, broker_url: str) -> Options:
    quick = bool(args.quick)

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    return Options(
        broker_url=broker_url,
        tasks=pick(args.tasks, 10_000, 3_000),
        rounds=pick(args.rounds, 3, 2),
        pool=args.pool,
        publish_tasks=pick(args.publish_tasks, 20_000, 4_000),
        bulk_tasks=pick(args.bulk_tasks, 100_000, 20_000),
        latency_rate=args.latency_rate,
        latency_seconds=pick(args.latency_seconds, 10.0, 3.0),
        latency_rounds=pick(args.latency_rounds, 2, 1),
        only=tuple(args.only or ("throughput", "publish", "latency")),
        json_path=args.json_path,
        keep_logs=bool(args.keep_logs),
        ablation=bool(args.ablation),
    )


# --------------------------------------------------------------------------- broker


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@contextmanager
def broker(url: str | None) -> Iterator[str]:
    """The configured Redis when it answers, else an embedded Valkey for the run's duration."""
    url = url or os.environ.get("TASKLANE_BROKER_URL") or DEFAULT_BROKER_URL
    if answers(url):
        yield url
        return
    from tasklane_dev.embedded import EmbeddedBroker

    print(f"nothing answers at {url}; starting an embedded broker", file=sys.stderr)
    with EmbeddedBroker() as embedded:
        yield embedded.url


def cleanup(client: redis.Redis) -> None:
    """Delete what the benchmark wrote: its queues and bindings, results, unacked and samples."""
    patterns = (
        f"{NAMESPACE}*",
        f"_kombu.binding.{NAMESPACE}*",
        f"_kombu.binding_permanent.{NAMESPACE}*",
        f"{RESULT_PREFIX}*",
        "unacked*",
    )
    for pattern in patterns:
        batch: list[bytes] = []
        for key in client.scan_iter(pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)


def queue_depth(client: redis.Redis, queue: str) -> int:
    from tasklane.wire.broker import redis_queue_keys

    pipe = client.pipeline(transaction=False)
    for key in redis_queue_keys(queue):
        pipe.llen(key)
    return int(sum(pipe.execute()))


def count_keys(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(pattern, count=5000))


# --------------------------------------------------------------------------- worker processes


class Worker:
    """A real ``celery worker`` subprocess in its own process group, killed as a group."""

    def __init__(
        self,
        side: Side,
        broker_url: str,
        *,
        pool: str,
        concurrency: int,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        app = "noop_service:tasklane_app" if side == "tasklane" else "noop_service:bare_app"
        self.log = log_dir / f"{side}-{uuid.uuid4().hex[:6]}.log"
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool", pool, "--concurrency", str(concurrency), "--loglevel", "WARNING",
            # Cluster chatter is noise here and costs the same on both sides: switch it off.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"bench-{side}-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "TASKLANE_BROKER_URL": broker_url,
            "TASKLANE_NAMESPACE": NAMESPACE,
            "PYTHONPATH": path,
            **(extra_env or {}),
        }
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: pool children die with it
        )

    def group_stats(self) -> dict[int, list[str]]:
        """``/proc/<pid>/stat`` fields after the command, of every live process in the group."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # Fields after the parenthesised command: pgrp is 5th, utime 14th, stime 15th.
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid:
                found[int(entry.name)] = fields
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in the worker's group (pool children too)."""
        ticks = sum(int(f[11]) + int(f[12]) for f in self.group_stats().values())
        return ticks / CLOCK_TICKS

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited ({self.process.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the whole group, SIGKILL it if it lingers; safe to call twice."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        # The main process may be gone while a pool child still runs: sweep the group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log_file.close()


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    try:
        yield worker
    finally:
        worker.stop()


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    worker: Worker | None = None,
    *,
    poll: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if worker is not None:
            worker.check_alive()
        if time.monotonic() > deadline:
            tail = f"\n{worker.tail()}" if worker is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(poll)


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured figure: its per-round values, compared with a baseline figure."""

    benchmark: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: str | None = None
    higher_is_better: bool = True
    target: float | None = None
    target_kind: str = ""  # "ratio" (vs baseline) or "absolute"
    notes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan


def ratio(figure: Figure, figures: dict[str, Figure]) -> float | None:
    if figure.baseline is None:
        return None
    base = figures[figure.baseline].median
    return figure.median / base if base else None


def target_met(figure: Figure, figures: dict[str, Figure]) -> bool | None:
    if figure.target is None:
        return None
    value = ratio(figure, figures) if figure.target_kind == "ratio" else figure.median
    if value is None or math.isnan(value):
        return None
    return value >= figure.target if figure.higher_is_better else value <= figure.target


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``p``% of samples at or below."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------- 1. throughput


def prefill(side: Side, count: int) -> list[str]:
    """``count`` no-op messages in the side's queue, pipelined; returns their ids in order."""
    import noop_service as svc

    from tasklane.publish import Publisher

    if side == "tasklane":
        with Publisher(svc.settings, registry=svc.BENCH_REGISTRY) as publisher:
            handles = publisher.publish_many(svc.NOOP, ({"n": i} for i in range(count)))
            return [handle.id for handle in handles]
    # Celery's own message builder and sender, without apply_async's result-backend subscription:
    # a pub/sub channel per task would make Redis push every result to this idle process.
    amqp = svc.bare_app.amqp
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with svc.bare_app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for i, task_id in enumerate(ids):
            message = amqp.create_task_message(task_id, svc.BARE_TASK, (), {"n": i})
            amqp.send_task_message(producer, svc.BARE_TASK, message, queue=svc.BARE_QUEUE_NAME)
    return ids


def queue_of(side: Side) -> str:
    import noop_service as svc

    return svc.BARE_QUEUE_NAME if side == "bare" else f"{NAMESPACE}{svc.NOOP.queue}"


def results(client: redis.Redis, ids: Sequence[str]) -> list[dict[str, Any] | None]:
    raw = client.mget([f"{RESULT_PREFIX}{task_id}" for task_id in ids])
    return [json.loads(item) if item is not None else None for item in raw]


def all_succeeded(client: redis.Redis, ids: Sequence[str]) -> bool:
    return all(r is not None and r.get("status") == "SUCCESS" for r in results(client, ids))


def done_at(meta: dict[str, Any] | None) -> float:
    assert meta is not None
    return datetime.fromisoformat(str(meta["date_done"])).timestamp()


@dataclass(frozen=True)
class Variant:
    """One worker configuration measured for throughput."""

    key: str
    label: str
    side: Side
    env: dict[str, str] = field(default_factory=dict)


BARE = Variant("throughput.bare", "bare Celery", "bare")
TASKLANE = Variant("throughput.tasklane", "Tasklane", "tasklane")
_NO_EVENTS = {"TASKLANE_TASK_EVENTS": "false"}
#: Tasklane with parts of its configuration switched off, to attribute the throughput gap.
ABLATIONS = (
    Variant("throughput.tasklane.no_events", "Tasklane, TASKLANE_TASK_EVENTS=false", "tasklane",
            _NO_EVENTS),
    Variant("throughput.tasklane.no_events_started", "Tasklane, events + track_started off",
            "tasklane", {**_NO_EVENTS, "TASKLANE_BENCH_CONF": '{"task_track_started": false}'}),
    Variant("throughput.tasklane.no_events_started_extended",
            "Tasklane, events + track_started + result_extended off", "tasklane",
            {**_NO_EVENTS, "TASKLANE_BENCH_CONF":
             '{"task_track_started": false, "result_extended": false}'}),
    Variant("throughput.tasklane.no_events_started_extended_ackslate",
            "Tasklane, the three above + acks_late off", "tasklane",
            {**_NO_EVENTS, "TASKLANE_BENCH_CONF":
             '{"task_track_started": false, "result_extended": false}',
             "TASKLANE_BENCH_TASK_ATTRS": '{"acks_late": false}'}),
)  # fmt: skip


def cpu_key(variant: Variant) -> str:
    return variant.key.replace("throughput.", "worker_cpu.", 1)


def throughput_run(
    client: redis.Redis, variant: Variant, opts: Options, log_dir: Path
) -> dict[str, float]:
    """One run: prefill, start a worker, time first to last result from the results' own stamps.

    ``date_done`` is written by the worker as each result is stored, so the figure excludes worker
    start-up and the polling here, and includes storing every result.
    """
    side = variant.side
    cleanup(client)
    ids = prefill(side, opts.tasks)
    assert queue_depth(client, queue_of(side)) == opts.tasks
    concurrency = 1 if opts.pool == "solo" else 2
    worker = Worker(
        side,
        opts.broker_url,
        pool=opts.pool,
        concurrency=concurrency,
        log_dir=log_dir,
        extra_env=variant.env,
    )
    with running(worker):
        first, last = f"{RESULT_PREFIX}{ids[0]}", ids[-EDGE:]
        # CPU is sampled once consumption has begun, so start-up (imports, connecting) is not in it.
        wait_for(lambda: bool(client.exists(first)), 120, f"{side} start", worker, poll=0.01)
        cpu_start, depth_start = worker.cpu_seconds(), queue_depth(client, queue_of(side))
        wait_for(lambda: all_succeeded(client, last), 600, f"{side} drain", worker)
        cpu_used = worker.cpu_seconds() - cpu_start
        wait_for(
            lambda: count_keys(client, f"{RESULT_PREFIX}*") >= opts.tasks,
            60,
            f"{side}: all {opts.tasks} results",
            worker,
        )
    first_done = min(done_at(m) for m in results(client, ids[:EDGE]))
    last_done = max(done_at(m) for m in results(client, last))
    sample = results(client, ids[:: max(1, len(ids) // 50)])
    bad = [m for m in sample if m is None or m.get("status") != "SUCCESS"]
    if bad:
        raise RuntimeError(f"{side}: {len(bad)} sampled results did not succeed: {bad[:3]}")
    elapsed = last_done - first_done
    return {
        "tasks_per_s": (opts.tasks - 1) / elapsed,
        "seconds": elapsed,
        "cpu_us_per_task": cpu_used / max(1, depth_start) * 1e6,
    }


def bench_throughput(
    client: redis.Redis, opts: Options, log_dir: Path, figures: dict[str, Figure]
) -> None:
    variants = (BARE, TASKLANE, *(ABLATIONS if opts.ablation else ()))
    for variant in variants:
        hardened = variant.side == "tasklane"
        figures.setdefault(
            variant.key,
            Figure(
                "worker throughput",
                variant.label,
                "tasks/s",
                baseline=BARE.key if hardened else None,
                target=0.95 if variant is TASKLANE else None,
                target_kind="ratio",
                notes=f"pool {opts.pool}",
            ),
        )
        figures.setdefault(
            cpu_key(variant),
            Figure(
                "worker CPU per task",
                variant.label,
                "us",
                baseline=cpu_key(BARE) if hardened else None,
                higher_is_better=False,
                notes=f"pool {opts.pool}",
            ),
        )
    for round_no in range(opts.rounds):
        # Alternate the order so drift in the machine's load hits every variant alike.
        for variant in variants if round_no % 2 == 0 else variants[::-1]:
            run = throughput_run(client, variant, opts, log_dir)
            figures[variant.key].values.append(run["tasks_per_s"])
            figures[cpu_key(variant)].values.append(run["cpu_us_per_task"])
            print(
                f"  throughput round {round_no + 1} {variant.label:55s} "
                f"{run['tasks_per_s']:7.0f} tasks/s ({opts.tasks} in {run['seconds']:.2f}s), "
                f"worker CPU {run['cpu_us_per_task']:.0f} us/task",
                flush=True,
            )
    cleanup(client)


# --------------------------------------------------------------------------- 2. publish rate


def purge(client: redis.Redis, side: Side) -> None:
    from tasklane.wire.broker import redis_queue_keys

    client.unlink(*redis_queue_keys(queue_of(side)))


def timed(count: int, action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return count / (time.perf_counter() - start)


def publish_round(client: redis.Redis, opts: Options) -> dict[str, float]:
    import noop_service as svc

    from tasklane.publish import Publisher
    from tasklane.wire.broker import redis_queue_keys

    rates: dict[str, float] = {}
    single, bulk = opts.publish_tasks, opts.bulk_tasks

    def apply_async_loop() -> None:
        for i in range(single):
            svc.bare_noop.apply_async(kwargs={"n": i})

    svc.bare_noop.apply_async(kwargs={"n": -1})  # warm: connection, producer pool, declare
    purge(client, "bare")
    rates["apply_async"] = timed(single, apply_async_loop)
    purge(client, "bare")

    with Publisher(svc.settings, registry=svc.BENCH_REGISTRY) as publisher:

        def publish_loop() -> None:
            for i in range(single):
                publisher.publish(svc.NOOP, {"n": i})

        def publish_bulk() -> None:
            publisher.publish_many(svc.NOOP, ({"n": i} for i in range(bulk)))

        publisher.publish(svc.NOOP, {"n": -1})  # warm: connection and queue declaration
        purge(client, "tasklane")
        rates["publish"] = timed(single, publish_loop)
        purge(client, "tasklane")
        rates["publish_many"] = timed(bulk, publish_bulk)
        if queue_depth(client, queue_of("tasklane")) != bulk:
            raise RuntimeError("publish_many: queue depth does not match the messages sent")
        sample = next(item for key in redis_queue_keys(queue_of("tasklane"))
                      for item in client.lrange(key, 0, 0))  # fmt: skip
        purge(client, "tasklane")

    def raw_lpush() -> None:
        # What the broker takes: one LPUSH of a message of the same size per command,
        # pipelined 1,000 at a time, nothing built per message.
        for start in range(0, bulk, 1000):
            pipeline = client.pipeline(transaction=False)
            for _ in range(min(1000, bulk - start)):
                pipeline.lpush(RAW_LIST, sample)
            pipeline.execute()

    rates["raw_lpush"] = timed(bulk, raw_lpush)
    rates["message_bytes"] = len(sample)
    client.delete(RAW_LIST)
    return rates


def bench_publish(client: redis.Redis, opts: Options, figures: dict[str, Figure]) -> None:
    base = figures.setdefault(
        "publish.apply_async",
        Figure("publish rate", "Celery apply_async loop", "msg/s", notes=f"{opts.publish_tasks}"),
    )
    single = figures.setdefault(
        "publish.publish",
        Figure(
            "publish rate",
            "Publisher.publish loop",
            "msg/s",
            baseline="publish.apply_async",
            target=3.0,
            target_kind="ratio",
            notes=f"{opts.publish_tasks}",
        ),
    )
    raw = figures.setdefault(
        "publish.raw_lpush",
        Figure("publish rate", "redis-py pipelined LPUSH, same size", "msg/s"),
    )
    bulk = figures.setdefault(
        "publish.publish_many",
        Figure(
            "publish rate",
            "Publisher.publish_many",
            "msg/s",
            baseline="publish.apply_async",
            target=50_000,
            target_kind="absolute",
            notes=f"{opts.bulk_tasks}",
        ),
    )
    # The same rounds against what the broker takes: the second target of the bulk path.
    bulk_vs_raw = figures.setdefault(
        "publish.publish_many_vs_raw",
        Figure(
            "publish rate",
            "Publisher.publish_many vs the broker",
            "msg/s",
            baseline="publish.raw_lpush",
            target=0.30,
            target_kind="ratio",
        ),
    )
    cleanup(client)
    for round_no in range(opts.rounds):
        rates = publish_round(client, opts)
        base.values.append(rates["apply_async"])
        single.values.append(rates["publish"])
        bulk.values.append(rates["publish_many"])
        bulk_vs_raw.values.append(rates["publish_many"])
        raw.values.append(rates["raw_lpush"])
        print(
            f"  publish round {round_no + 1}: apply_async {rates['apply_async']:.0f}, "
            f"publish {rates['publish']:.0f}, publish_many {rates['publish_many']:.0f}, "
            f"raw LPUSH of {rates['message_bytes']:.0f} bytes {rates['raw_lpush']:.0f} msg/s",
            flush=True,
        )
    cleanup(client)


# --------------------------------------------------------------------------- 3. latency


def publisher_for(side: Side) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A function sending task ``n`` the side's normal way, and one releasing its resources."""
    import noop_service as svc

    from tasklane.publish import Publisher
    from tasklane.wire.headers import PUBLISHED_AT

    if side == "tasklane":
        publisher = Publisher(svc.settings, registry=svc.BENCH_REGISTRY)

        def publish(n: int) -> None:
            publisher.publish(svc.NOOP, {"n": n})

        return publish, publisher.close

    def send(n: int) -> None:
        # Stamped right before the call, like Tasklane stamps it inside publish().
        svc.bare_noop.apply_async(kwargs={"n": n}, headers={PUBLISHED_AT: time.time()})

    return send, lambda: None


def samples_key(side: Side) -> str:
    import noop_service as svc

    return f"{LATENCY_KEY}:{svc.NOOP.name if side == 'tasklane' else svc.BARE_TASK}"


def latency_window(
    client: redis.Redis, side: Side, send: Callable[[int], None], opts: Options, worker: Worker
) -> dict[str, float]:
    """Publish at a steady rate for the window; the worker records publish-to-start per task."""
    key = samples_key(side)
    client.delete(key)
    count = max(1, round(opts.latency_rate * opts.latency_seconds))
    interval = 1.0 / opts.latency_rate
    start = time.perf_counter()
    for n in range(count):
        # An absolute schedule: a slow publish is caught up, not added to every later gap.
        delay = start + n * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(n)
    sent_in = time.perf_counter() - start
    wait_for(lambda: client.llen(key) >= count, 60, f"{side} latency samples", worker)
    values = sorted(float(v) * 1000 for v in client.lrange(key, 0, -1))
    client.delete(key)
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1],
        "samples": float(len(values)),
        "rate": count / sent_in,
    }


def warm_up(client: redis.Redis, side: Side, send: Callable[[int], None], worker: Worker) -> None:
    """Until the worker is up and each pool process has run tasks (first runs connect to Redis)."""
    key = samples_key(side)
    client.delete(key)
    deadline = time.monotonic() + 90
    n = 0
    while client.llen(key) < 20:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{side} worker never started tasks:\n{worker.tail()}")
        if n < 200:
            send(n)
            n += 1
        time.sleep(0.05)
    time.sleep(0.5)
    client.delete(key)


def bench_latency(
    client: redis.Redis, opts: Options, log_dir: Path, figures: dict[str, Figure]
) -> None:
    rate = f"{opts.latency_rate:g}/s"
    made: dict[str, Figure] = {}
    for stat, target in (("p50", 3.0), ("p99", 15.0)):
        made[f"bare.{stat}"] = figures.setdefault(
            f"latency.bare.{stat}",
            Figure("publish-to-start", f"bare Celery {stat}", "ms", higher_is_better=False),
        )
        made[f"tasklane.{stat}"] = figures.setdefault(
            f"latency.tasklane.{stat}",
            Figure(
                "publish-to-start",
                f"Tasklane {stat}",
                "ms",
                baseline=f"latency.bare.{stat}",
                higher_is_better=False,
                target=target,
                target_kind="absolute",
                notes=f"prefork -c 2, {rate}",
            ),
        )
    cleanup(client)
    env = {"TASKLANE_BENCH_LATENCY_KEY": LATENCY_KEY}
    with ExitStack() as stack:
        workers: dict[Side, Worker] = {}
        senders: dict[Side, Callable[[int], None]] = {}
        for side in SIDES:
            worker = Worker(
                side, opts.broker_url, pool="prefork", concurrency=2, log_dir=log_dir, extra_env=env
            )
            workers[side] = stack.enter_context(running(worker))
            send, close = publisher_for(side)
            stack.callback(close)
            senders[side] = send
        for side in SIDES:
            warm_up(client, side, senders[side], workers[side])
        for round_no in range(opts.latency_rounds):
            order = SIDES if round_no % 2 == 0 else SIDES[::-1]
            for side in order:
                window = latency_window(client, side, senders[side], opts, workers[side])
                made[f"{side}.p50"].values.append(window["p50_ms"])
                made[f"{side}.p99"].values.append(window["p99_ms"])
                print(
                    f"  latency round {round_no + 1} {side:8s} p50 {window['p50_ms']:.2f} ms, "
                    f"p99 {window['p99_ms']:.2f} ms, max {window['max_ms']:.1f} ms "
                    f"({window['samples']:.0f} tasks at {window['rate']:.1f}/s)",
                    flush=True,
                )
    cleanup(client)


# --------------------------------------------------------------------------- report


def environment(client: redis.Redis, opts: Options) -> dict[str, Any]:
    from importlib.metadata import version

    server = client.info("server")
    return {
        "nproc": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis_py": version("redis"),
        "pydantic": version("pydantic"),
        "redis_server": server.get("redis_version") or server.get("valkey_version"),
        "broker": opts.broker_url,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
    }


def print_table(figures: dict[str, Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Tasklane benchmarks (median over rounds)")
    for column in ("benchmark", "figure", "median", "rounds", "baseline", "ratio", "target"):
        table.add_column(column, justify="right" if column in ("median", "ratio") else "left")
    benchmarks = list(dict.fromkeys(f.benchmark for f in figures.values()))
    for figure in sorted(figures.values(), key=lambda f: benchmarks.index(f.benchmark)):
        r = ratio(figure, figures)
        met = target_met(figure, figures)
        target = ""
        if figure.target is not None:
            sign = ">=" if figure.higher_is_better else "<="
            shown = f"{figure.target:g}x" if figure.target_kind == "ratio" else f"{figure.target:g}"
            target = f"{sign} {shown} " + ("[green]met[/]" if met else "[red]MISSED[/]")
        precision = ".2f" if figure.unit == "ms" else ".0f"
        table.add_row(
            figure.benchmark,
            figure.name,
            f"{figure.median:{precision}} {figure.unit}",
            ", ".join(f"{v:{precision}}" for v in figure.values),
            figures[figure.baseline].name if figure.baseline else "-",
            f"{r:.3f}x" if r is not None else "-",
            target,
        )
    # Wide enough for whole figure names even when stdout is not a terminal.
    console = Console()
    console.width = max(console.width, 150)
    console.print(table)


def report(figures: dict[str, Figure], env: dict[str, Any]) -> dict[str, Any]:
    return {
        "environment": env,
        "figures": {
            key: {
                **asdict(figure),
                "median": figure.median,
                "ratio_vs_baseline": ratio(figure, figures),
                "target_met": target_met(figure, figures),
            }
            for key, figure in figures.items()
        },
    }


# --------------------------------------------------------------------------- main


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its worker group.
    raise KeyboardInterrupt


def run(opts: Options) -> dict[str, Any]:
    client = redis.Redis.from_url(opts.broker_url)
    env = environment(client, opts)
    print(
        f"broker {opts.broker_url}, {env['nproc']} CPUs, Python {env['python']}, "
        f"Celery {env['celery']}, Redis {env['redis_server']}",
        flush=True,
    )
    figures: dict[str, Figure] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="tasklane-bench-"))
    try:
        try:
            if "throughput" in opts.only:
                print(f"worker throughput: {opts.tasks} tasks, pool {opts.pool}", flush=True)
                bench_throughput(client, opts, log_dir, figures)
            if "publish" in opts.only:
                print(
                    f"publish rate: {opts.publish_tasks} single, {opts.bulk_tasks} bulk",
                    flush=True,
                )
                bench_publish(client, opts, figures)
            if "latency" in opts.only:
                print(
                    f"publish-to-start latency: {opts.latency_rate:g}/s for "
                    f"{opts.latency_seconds:g}s x {opts.latency_rounds} per side",
                    flush=True,
                )
                bench_latency(client, opts, log_dir, figures)
        finally:
            cleanup(client)
    finally:
        if opts.keep_logs:
            print(f"worker logs in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    print_table(figures)
    return report(figures, env)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with broker(args.broker) as url:
            # noop_service reads these at import, here and in every worker.
            os.environ["TASKLANE_BROKER_URL"] = url
            os.environ["TASKLANE_NAMESPACE"] = NAMESPACE
            opts = options_from(args, url)
            result = run(opts)
    except KeyboardInterrupt:
        print("interrupted; workers stopped", file=sys.stderr)
        return 130
    text = json.dumps(result, indent=2, default=str)
    if opts.json_path is not None:
        opts.json_path.write_text(text + "\n")
        print(f"figures written to {opts.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
