"""What storing a task's result costs a worker: Tasklane's one trip against Celery's backend.

A worker stores each task's result through its app's backend (``Backend.store_result``, called
by Celery's tracer in the pool process). Celery's ``RedisBackend`` reads the stored result
first, then writes it (``SETEX`` and ``PUBLISH`` in a pipeline): two round trips. Tasklane's
``RedisResults`` (``tasklane.wire.results``) does both in one script. Both backends are made
from one Tasklane worker app and store the same successes (``result_extended`` on, as a worker
stores them), ``--results`` a round, alternating which goes first; printed: the CPU this process
spent per result and results per second, median of ``--rounds``, and the ratio of each.

    .venv/bin/python bench/result_store.py [--broker URL] [--results 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from run import broker  # noqa: E402  (the same broker choice as the other benchmarks)

NAMESPACE = "perfresults."


class Request:
    """What a worker's request gives the backend for an extended result."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.task = "notifier.email.send"
        self.args: list[Any] = []
        self.kwargs = {"to": ["user@example.com"], "subject": "Welcome", "template": "welcome"}
        self.hostname = "bench@host"
        self.retries = 0
        self.delivery_info = {"routing_key": "notifier.email", "exchange": ""}
        self.group = None
        self.parent_id = None
        self.children: list[Any] = []


def store_round(backend: Any, count: int) -> tuple[float, float, list[str]]:
    """CPU µs per result and results/s over ``count`` stores; the ids stored."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    requests = [Request(task_id) for task_id in ids]
    result = {"delivered": 1, "message_id": "<bench@example.com>"}
    cpu, wall = time.process_time(), time.perf_counter()
    for task_id, request in zip(ids, requests, strict=True):
        backend.store_result(task_id, result, "SUCCESS", request=request)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / count * 1e6, count / wall, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="Redis broker URL (default: bench/run.py's)")
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with broker(args.broker) as broker_url:
        from celery.backends.redis import RedisBackend

        from tasklane.settings import Settings
        from tasklane.worker.app import create_app

        app = create_app("notifier", settings=Settings(broker_url=broker_url, namespace=NAMESPACE))
        backends = {
            "Tasklane RedisResults": app.backend,
            "Celery RedisBackend": RedisBackend(app=app, url=app.conf.result_backend),
        }
        print(
            f"Storing task results on {broker_url}: {args.results} a round x {args.rounds}, "
            + " vs ".join(backends)
        )
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
        for round_no in range(args.rounds):
            order = list(backends.items())
            if round_no % 2:
                order.reverse()
            for name, backend in order:
                cpu, rate, ids = store_round(backend, args.results)
                figures[name].append((cpu, rate))
                client = app.backend.client
                for start in range(0, len(ids), 1000):
                    client.delete(*(f"celery-task-meta-{i}" for i in ids[start : start + 1000]))
            print(
                f"  round {round_no + 1}: "
                + "; ".join(
                    f"{name} {figures[name][-1][0]:.1f} us CPU, {figures[name][-1][1]:,.0f}/s"
                    for name in backends
                ),
                flush=True,
            )
        ours, celerys = (figures[name] for name in backends)
        cpu_ratio = statistics.median(o[0] / c[0] for o, c in zip(ours, celerys, strict=True))
        rate_ratio = statistics.median(o[1] / c[1] for o, c in zip(ours, celerys, strict=True))
        for name, rows in figures.items():
            print(
                f"  {name:<22} {statistics.median(r[0] for r in rows):7.1f} us CPU a result, "
                f"{statistics.median(r[1] for r in rows):9,.0f} results/s (medians)"
            )
        print(
            f"  Tasklane / Celery, paired by round (median): CPU a result {cpu_ratio:.3f}x, "
            f"results/s {rate_ratio:.3f}x"
        )
        app.close()


if __name__ == "__main__":
    main()
