"""The gateway's Prometheus metrics, served on its own port at ``/metrics``.

Labels are bounded: ``task`` is a registered task name (empty when the path named none),
``publisher`` a tokens-file name (empty before authentication).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Histogram

#: Seconds; a publish is about a millisecond, an outage answers after TASKLANE_PUBLISH_TIMEOUT.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class GatewayMetrics:
    """Requests by task, publisher and status; latency by task; tasks published."""

    requests: Counter
    duration: Histogram
    published: Counter


@cache
def gateway_metrics() -> GatewayMetrics:
    """This process's gateway metrics, registered in prometheus-client's default registry."""
    return GatewayMetrics(
        requests=Counter(
            "tasklane_gateway_requests",
            "Requests under /v1, by task, publisher and HTTP status.",
            ("task", "publisher", "status"),
        ),
        duration=Histogram(
            "tasklane_gateway_request_duration_seconds",
            "Seconds from a /v1 request's arrival to its answer.",
            ("task",),
            buckets=DURATION_BUCKETS,
        ),
        published=Counter(
            "tasklane_gateway_tasks_published",
            "Tasks the gateway published, by task and publisher.",
            ("task", "publisher"),
        ),
    )
