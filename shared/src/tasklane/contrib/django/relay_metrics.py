"""What the outbox relay tells Prometheus and the probes: backlog, throughput, lag and errors.

Served with ``/livez`` and ``/readyz`` by :func:`tasklane.observability.metrics.serve_endpoints`.
Design: docs/django.md#metrics-and-probes.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

#: Why a relay pass failed, the ``reason`` label of ``tasklane_outbox_relay_errors_total``.
ERROR_REASONS = ("broker-unavailable", "database")
#: Seconds from a row's ``created_at`` to its send: from a woken relay to a long outage.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds without a beat of the relay loop after which ``/livez`` fails.
LIVE_TIMEOUT = 60.0


class RelayMetrics:
    """The relay's metrics, in ``registry`` (a new one per relay unless given: tests run several).

    Args:
        registry: where to register them; the command passes prometheus-client's default
            registry, which also holds the publisher's ``tasklane_tasks_published_total``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.pending = Gauge(
            "tasklane_outbox_pending_rows",
            "Committed outbox rows waiting to be sent, by contract.",
            ["contract"],
            registry=self.registry,
        )
        self.oldest_pending_age = Gauge(
            "tasklane_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row (0 when none waits).",
            registry=self.registry,
        )
        self.parked = Gauge(
            "tasklane_outbox_parked_rows",
            "Outbox rows parked because they can never be sent (see their last_error).",
            registry=self.registry,
        )
        self.sent = Counter(
            "tasklane_outbox_sent",
            "Outbox rows sent to the broker and marked sent, by contract.",
            ["contract"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "tasklane_outbox_relay_lag_seconds",
            "Seconds from an outbox row's creation to its send.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "tasklane_outbox_relay_errors",
            "Relay passes that failed, by reason (the relay backs off and retries).",
            ["reason"],
            registry=self.registry,
        )
        # A series first seen at 1 hides that first event from rate() and increase().
        for reason in ERROR_REASONS:
            self.errors.labels(reason)
        self._contracts: set[str] = set()

    def backlog(
        self, pending: Mapping[str, int], oldest_age: float, parked: int, known: Iterable[str] = ()
    ) -> None:
        """Set the backlog gauges; a contract seen before and not in ``pending`` reads 0."""
        self._contracts.update(pending, known)
        for contract in self._contracts:
            self.pending.labels(contract).set(pending.get(contract, 0))
        self.oldest_pending_age.set(oldest_age)
        self.parked.set(parked)

    def sent_rows(self, contract: str, lags: Iterable[float]) -> None:
        """Count rows of ``contract`` sent and committed, with their seconds since creation."""
        self._contracts.add(contract)  # its pending gauge reads 0 from the next refresh on
        count = 0
        for lag in lags:
            self.lag.observe(lag)
            count += 1
        self.sent.labels(contract).inc(count)

    def error(self, reason: str) -> None:
        """Count one failed pass (a reason of :data:`ERROR_REASONS`)."""
        self.errors.labels(reason).inc()


@functools.cache
def process_metrics() -> RelayMetrics:
    """Metrics in prometheus-client's default registry, made once: the process's relay's."""
    return RelayMetrics(REGISTRY)


@dataclass
class RelayHealth:
    """The relay's :class:`~tasklane.observability.health.Probes`, answered from memory.

    Live while the loop beat within ``live_timeout`` (an outage's back-off still beats); ready
    while the last round trip to the outbox database succeeded.
    """

    live_timeout: float = LIVE_TIMEOUT
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_beat: float = field(default_factory=time.monotonic)
    _ready: bool = False
    _why: str = "starting: the outbox database not reached yet"

    def beat(self) -> None:
        """The relay loop is making progress."""
        with self._lock:
            self._last_beat = time.monotonic()

    def database(self, reachable: bool, why: str) -> None:
        """The outbox database answered (or not): ``why`` says what happened."""
        with self._lock:
            self._ready = reachable
            self._why = why
            self._last_beat = time.monotonic()

    def live(self) -> tuple[bool, str]:
        """Whether the loop beat within the timeout, and when it last did."""
        with self._lock:
            age = time.monotonic() - self._last_beat
        ok = age <= self.live_timeout
        return ok, f"relay loop {'ran' if ok else 'stalled'} {age:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        """Whether the outbox database answered the last round trip, and why not."""
        with self._lock:
            return self._ready, self._why
