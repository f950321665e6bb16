"""Benchmark-only no-op task, twice: as a hardened Tasklane contract and as a bare Celery task.

Worker processes import this module with ``celery -A noop_service:<app> worker`` (``bench/`` is on
their ``PYTHONPATH``); ``bench/run.py`` imports it to publish. Settings come from the environment:

* ``TASKLANE_BROKER_URL`` (default ``redis://127.0.0.1:6379/12``) and ``TASKLANE_NAMESPACE``
  (default ``perf.``); every other ``TASKLANE_*`` variable is honoured as usual.
* ``TASKLANE_BENCH_CONF``: a JSON object of Celery settings applied over the Tasklane app's, and
  ``TASKLANE_BENCH_TASK_ATTRS`` one of task attributes (``acks_late``) set on its no-op task, for
  the ablation runs that attribute the hardening's cost (``run.py --ablation``).
* ``TASKLANE_BENCH_RUN_HOOKS=off``: observability set up as usual (threads, files, providers)
  but no task run observed: each pool process empties the app's run observers once it has
  started, so the rest of observability's cost is measured apart (``observability.py --only
  alone``).
* ``TASKLANE_BENCH_WORK_US``: CPU the no-op task spends on each run, in microseconds (its
  thread's CPU time), so that a known cost is measured as observability's is: the calibration
  row of ``observability.py --only split``.
* ``TASKLANE_BENCH_LATENCY_KEY``: when set, a ``task_prerun`` handler records, per task, the
  seconds between the ``x-tasklane-published-at`` header and the task's start in the Redis list
  ``<key>:<task name>``. Unset for the throughput runs so it costs them nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import task_prerun, worker_process_init

from tasklane.contracts import REGISTRY, Payload, Result, TaskContract
from tasklane.settings import Settings, load_settings
from tasklane.wire.headers import PUBLISHED_AT
from tasklane.worker.app import create_app

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/12"
DEFAULT_NAMESPACE = "perf."
LATENCY_KEY_ENV = "TASKLANE_BENCH_LATENCY_KEY"
CONF_ENV = "TASKLANE_BENCH_CONF"
TASK_ATTRS_ENV = "TASKLANE_BENCH_TASK_ATTRS"
RUN_HOOKS_ENV = "TASKLANE_BENCH_RUN_HOOKS"
WORK_ENV = "TASKLANE_BENCH_WORK_US"

BARE_TASK = "bench.bare.run"
BARE_QUEUE = "bench.bare"


class NoopPayload(Payload):
    """The benchmark payload: one integer."""

    n: int


class NoopResult(Result):
    """The benchmark result: the integer, echoed."""

    n: int


NOOP = TaskContract(
    name="bench.noop.run",
    queue="bench.noop",
    payload=NoopPayload,
    result=NoopResult,
    description="Benchmark no-op: returns its input.",
)

BENCH_REGISTRY = REGISTRY.extended(NOOP)


def bench_settings() -> Settings:
    """Settings from the environment, with the benchmark's broker and namespace as defaults."""
    broker = (
        os.environ.get("TASKLANE_BROKER_URL") or os.environ.get("REDIS_URL") or DEFAULT_BROKER_URL
    )
    namespace = os.environ.get("TASKLANE_NAMESPACE", DEFAULT_NAMESPACE)
    return load_settings(broker_url=broker, namespace=namespace)


settings = bench_settings()

# --------------------------------------------------------------------------- Tasklane side
tasklane_app = create_app("bench", settings=settings, registry=BENCH_REGISTRY)
if os.environ.get(CONF_ENV):
    tasklane_app.conf.update(json.loads(os.environ[CONF_ENV]))


def _unobserved_runs(**_: Any) -> None:
    # Connected after the app's own handlers, so it runs after tracing has set its spans too.
    tasklane_app.run_observers.metrics = None
    tasklane_app.run_observers.spans = None


if os.environ.get(RUN_HOOKS_ENV) == "off":
    worker_process_init.connect(_unobserved_runs, weak=False)


#: Seconds of CPU each run spends (0: none), read once at import.
_WORK_SECONDS = float(os.environ.get(WORK_ENV) or 0) / 1e6


@tasklane_app.implement(NOOP)
def noop(payload: NoopPayload) -> NoopResult:
    """Do nothing: the benchmark measures everything around the function."""
    if _WORK_SECONDS:
        _spend_cpu(_WORK_SECONDS)
    return NoopResult(n=payload.n)


def _spend_cpu(seconds: float) -> None:
    # The thread's own CPU clock: time the process spends waiting for a core does not count.
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


# An ablation of a task option overrides it on the task itself.
for _name, _value in json.loads(os.environ.get(TASK_ATTRS_ENV) or "{}").items():
    setattr(noop, _name, _value)


# --------------------------------------------------------------------------- bare Celery side
BARE_QUEUE_NAME = f"{settings.namespace}{BARE_QUEUE}"

bare_app = Celery(
    "bench-bare",
    set_as_current=False,
    broker=settings.require_broker(),
    backend=settings.result_backend,
)
bare_app.conf.update(
    # Celery defaults except: JSON like Tasklane, and the same prefetch and queue layout so the
    # comparison isolates Tasklane's hardening (acks_late, validation, events, started state...).
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    worker_prefetch_multiplier=settings.prefetch_multiplier,
    task_default_queue=BARE_QUEUE_NAME,
    task_routes={BARE_TASK: {"queue": BARE_QUEUE_NAME, "routing_key": BARE_QUEUE_NAME}},
    broker_connection_retry_on_startup=True,
)


@bare_app.task(name=BARE_TASK)  # type: ignore[untyped-decorator]
def bare_noop(n: int) -> dict[str, int]:
    """The bare equivalent of :func:`noop`: JSON-compatible dict in, same dict out."""
    return {"n": n}


# --------------------------------------------------------------------------- latency probe
_clients: dict[int, redis.Redis] = {}


def _client() -> redis.Redis:
    # One client per process: prefork children must not share the parent's socket.
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(settings.require_state())
    return _clients[pid]


def _record_start_latency(sender: Task | None = None, task: Task | None = None, **_: Any) -> None:
    started = time.time()  # first thing: nothing below may count as queue wait
    task = task or sender
    if task is None or task.name not in (NOOP.name, BARE_TASK):
        return
    published = task.request.get(PUBLISHED_AT)
    if published is None:
        return
    _client().rpush(f"{os.environ[LATENCY_KEY_ENV]}:{task.name}", started - float(published))


if os.environ.get(LATENCY_KEY_ENV):
    task_prerun.connect(_record_start_latency, weak=False)
