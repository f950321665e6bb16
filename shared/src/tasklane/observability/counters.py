"""The task counters and histograms of a Tasklane process, apart from what serves them.

Publishers count here too (``tasklane_tasks_published``), so this module loads prometheus-client
alone: no HTTP server, no Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

TASK_LABELS = ("task", "queue")
#: Why messages are dead-lettered (given by tasklane.worker.task and tasklane.worker.consumer).
DEAD_LETTER_REASONS = (
    "invalid-payload",
    "retries-exhausted",
    "time-limit",
    "permanent-error",
    "unexpected-error",
    "undecodable",
    "unknown-task",
    "unknown-message",
    "invalid-message",
)
RUNTIME = "tasklane_task_runtime_seconds"
#: A counter the worker's main process reads from Celery's own count of started tasks.
STARTED = "tasklane_tasks_started"
#: A gauge the worker's main process reads from Celery's own state at each scrape.
IN_FLIGHT = "tasklane_tasks_in_flight"
#: A counter the worker's main process keeps in memory (it alone receives tasks).
RECEIVED = "tasklane_tasks_received"
QUEUE_WAIT = "tasklane_task_queue_wait_seconds"
#: Seconds; from sub-millisecond no-ops to hour-long transcodes.
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds a task waited in its queue, publish to start.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


@dataclass(frozen=True)
class TaskMetrics:
    """The metrics every worker records, per task name and queue."""

    published: Counter
    publish_retries: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    revoked: Counter
    dead_lettered: Counter
    rejected: Counter
    runtime: Histogram
    queue_wait: Histogram
    worker_up: Gauge


@cache
def task_metrics() -> TaskMetrics:
    """This process's metric objects (created on first use, after the pool forked)."""
    return TaskMetrics(
        published=Counter(
            "tasklane_tasks_published", "Tasks published by this process.", TASK_LABELS
        ),
        publish_retries=Counter(
            "tasklane_publish_retries",
            "Publish attempts that failed on a lost or refused broker connection.",
            TASK_LABELS,
        ),
        succeeded=Counter("tasklane_tasks_succeeded", "Tasks that returned a result.", TASK_LABELS),
        failed=Counter("tasklane_tasks_failed", "Tasks that failed for good.", TASK_LABELS),
        retried=Counter("tasklane_tasks_retried", "Retries scheduled.", TASK_LABELS),
        revoked=Counter(
            "tasklane_tasks_revoked",
            "Tasks a worker dropped unrun: revoked (celery control revoke, Flower) or expired.",
            TASK_LABELS,
        ),
        dead_lettered=Counter(
            "tasklane_tasks_dead_lettered",
            "Messages sent to a dead-letter queue, by reason.",
            (*TASK_LABELS, "reason"),
        ),
        rejected=Counter(
            "tasklane_tasks_rejected",
            "Tasks refused by the worker because their payload broke the contract.",
            TASK_LABELS,
        ),
        runtime=Histogram(
            RUNTIME,
            "Time a task ran.",
            TASK_LABELS,
            buckets=RUNTIME_BUCKETS,
        ),
        queue_wait=Histogram(
            QUEUE_WAIT,
            "Time from publish (the message's own timestamp) to start.",
            TASK_LABELS,
            buckets=WAIT_BUCKETS,
        ),
        worker_up=Gauge(
            "tasklane_worker_up",
            "1 while the worker's main process runs.",
            ("service",),
            multiprocess_mode="livemax",
        ),
    )
