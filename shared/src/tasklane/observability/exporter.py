"""``tasklane exporter``: Prometheus gauges read from the broker, which no worker can report.

The broker is asked on a scrape, at most once per ``interval`` seconds, for what it can tell
without disturbing the queues.
Design: docs/observability.md#what-each-broker-can-tell.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from kombu.connection import Connection
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from tasklane.contracts import REGISTRY, ContractRegistry
from tasklane.settings import Settings, load_settings
from tasklane.wire.broker import redis_queue_keys, transport_options
from tasklane.wire.headers import PUBLISHED_AT
from tasklane.wire.queues import QueueKind, passive_declares, queue_names

DEFAULT_PORT = 9808
DEFAULT_INTERVAL = 15.0
#: Seconds to wait for the broker: a scrape must be answered even while the broker hangs.
BROKER_TIMEOUT = 5.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueStats:
    """What the broker tells about one queue; ``None`` where this broker cannot tell."""

    name: str
    kind: QueueKind
    messages: int
    unacked: int | None = None
    consumers: int | None = None
    oldest_age: float | None = None


def _connect(settings: Settings) -> Connection:
    # Same transport options as every Tasklane process (priority sub-lists), plus timeouts.
    options = transport_options(settings)
    if settings.broker_is_redis:
        options |= {"socket_timeout": BROKER_TIMEOUT, "socket_connect_timeout": BROKER_TIMEOUT}
    return Connection(
        settings.require_broker(), connect_timeout=BROKER_TIMEOUT, transport_options=options
    )


def _published_at(raw: bytes | str | None) -> float | None:
    """The publish time in a Kombu Redis envelope; ``None`` when absent (plain Celery)."""
    if raw is None:
        return None
    try:
        envelope = json.loads(raw)
    except ValueError:
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    value = headers.get(PUBLISHED_AT) if isinstance(headers, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _oldest_age(heads: Sequence[bytes | None], now: float) -> float | None:
    """Age of the oldest of the messages each sub-list hands out next.

    0 for an empty queue (nothing waits); ``None`` when no next message carries the header.
    """
    stamps = [stamp for stamp in map(_published_at, heads) if stamp is not None]
    if stamps:
        # Clamped: the publisher's clock may run a little ahead of this host's.
        return max(0.0, now - min(stamps))
    return 0.0 if all(head is None for head in heads) else None


def _unacked_queue(raw: bytes | str) -> str | None:
    """The queue of one entry of Kombu's ``unacked`` hash: ``[message, exchange, routing_key]``.

    Every Tasklane route (default exchange, the queue's own direct exchange, the DLX) uses the
    queue's name as its routing key, so the routing key names the queue.
    """
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str):
        return entry[2]
    return None


def _redis_unacked(client: Any, key: str, names: Sequence[str]) -> dict[str, int]:
    # The hash is shared by every queue of the Redis DB; HSCAN keeps a big one from blocking it.
    counts = dict.fromkeys(names, 0)
    for _, raw in client.hscan_iter(key, count=500):
        queue = _unacked_queue(raw)
        if queue in counts:
            counts[queue] += 1
    return counts


def _redis_stats(
    connection: Connection, queues: Sequence[tuple[str, QueueKind]]
) -> list[QueueStats]:
    """Depth, unacknowledged count and oldest age of each queue, in one pipeline and one scan.

    Kombu LPUSHes and RPOPs, so the right end (index -1) of each sub-list goes next. Tasklane sets
    no ``global_keyprefix`` (see :func:`tasklane.wire.broker.transport_options`): keys are used as
    is.
    """
    names = [name for name, _ in queues]
    with connection.channel() as channel:
        client = channel.client
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                for key in redis_queue_keys(name):
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            replies: list[Any] = pipe.execute()
        now = time.time()
        unacked = _redis_unacked(client, channel.unacked_key, names)
    width = 2 * len(redis_queue_keys(""))
    stats: list[QueueStats] = []
    for index, (name, kind) in enumerate(queues):
        chunk = replies[index * width : (index + 1) * width]
        # A DLQ's age would be that of a long-dead message: not a backlog signal, so left out.
        age = _oldest_age(chunk[1::2], now) if kind == "work" else None
        stats.append(
            QueueStats(name, kind, sum(chunk[0::2]), unacked=unacked[name], oldest_age=age)
        )
    return stats


def _amqp_stats(
    connection: Connection, queues: Sequence[tuple[str, QueueKind]]
) -> list[QueueStats]:
    """Depth and consumers of each queue by passive declares, which never create a queue."""
    found = passive_declares(connection, [name for name, _ in queues])
    return [
        QueueStats(name, kind, messages, consumers=consumers)
        for (name, kind), (messages, consumers) in zip(queues, found, strict=True)
    ]


def read_queues(settings: Settings, contracts: ContractRegistry = REGISTRY) -> list[QueueStats]:
    """What the broker tells about every work queue and DLQ of ``contracts``; missing ones are 0.

    Raises:
        SettingsError: no broker is configured.
        Exception: whatever the broker client raises when the broker cannot be read.
    """
    queues = queue_names(contracts, settings.namespace)
    with _connect(settings) as connection:
        # One attempt, no back-off sleep: a scrape must answer quickly; the next one retries.
        connection.ensure_connection(max_retries=0)
        if connection.transport.driver_type == "redis":
            return _redis_stats(connection, queues)
        return _amqp_stats(connection, queues)


def _queue_metrics(stats: Sequence[QueueStats]) -> list[Metric]:
    messages = GaugeMetricFamily(
        "tasklane_queue_messages",
        "Messages waiting in the queue (all priority levels), reserved ones not included.",
        labels=["queue", "kind"],
    )
    unacked = GaugeMetricFamily(
        "tasklane_queue_unacked_messages",
        "Messages reserved by a consumer and not yet acknowledged (Redis only).",
        labels=["queue"],
    )
    consumers = GaugeMetricFamily(
        "tasklane_queue_consumers", "Consumers of the queue (RabbitMQ only).", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "tasklane_queue_oldest_message_age_seconds",
        "Seconds since the oldest waiting message of a work queue was published; 0 when empty "
        "(Redis only).",
        labels=["queue"],
    )
    for queue in stats:
        messages.add_metric([queue.name, queue.kind], queue.messages)
        for family, value in ((unacked, queue.unacked), (consumers, queue.consumers)):
            if value is not None:
                family.add_metric([queue.name], value)
        if queue.oldest_age is not None:
            age.add_metric([queue.name], queue.oldest_age)
    return [family for family in (messages, unacked, consumers, age) if family.samples]


class QueueCollector(Collector):
    """Reads the broker on a scrape, at most once per ``interval`` seconds, and never raises.

    Caching keeps frequent (or several) scrapers from hammering the broker; a failed read is cached
    as well, so a broker that is down is not retried on every scrape either.
    """

    def __init__(
        self, settings: Settings, interval: float, contracts: ContractRegistry = REGISTRY
    ) -> None:
        self._settings = settings
        self._interval = interval
        self._contracts = contracts
        self._lock = threading.Lock()
        self._metrics: list[Metric] = []
        self._read_at = -math.inf

    def collect(self) -> list[Metric]:
        """The metrics of the last broker read, read again when older than ``interval``."""
        with self._lock:  # concurrent scrapes wait for one read rather than each doing their own
            if time.monotonic() - self._read_at >= self._interval:
                self._metrics = self._read()
                self._read_at = time.monotonic()
            return list(self._metrics)

    def _read(self) -> list[Metric]:
        started = time.perf_counter()
        try:
            stats: list[QueueStats] | None = read_queues(self._settings, self._contracts)
        except Exception as exc:  # a broken broker is reported as up=0, never a dead exporter
            logger.warning("tasklane exporter: cannot read the broker: %s", exc)
            stats = None
        duration = time.perf_counter() - started
        up = GaugeMetricFamily(
            "tasklane_exporter_up", "1 when the last broker read worked, 0 otherwise.",
            value=0 if stats is None else 1,
        )  # fmt: skip
        took = GaugeMetricFamily(
            "tasklane_exporter_scrape_duration_seconds",
            "Seconds the last broker read took.",
            value=duration,
        )
        return [*_queue_metrics(stats or []), up, took]


def collect_once(settings: Settings, contracts: ContractRegistry = REGISTRY) -> list[Sample]:
    """Every sample one fresh scrape would expose (no cache): for tests and one-off checks."""
    collector = QueueCollector(settings, interval=0.0, contracts=contracts)
    return [sample for family in collector.collect() for sample in family.samples]


def start(
    settings: Settings,
    port: int = DEFAULT_PORT,
    interval: float = DEFAULT_INTERVAL,
    addr: str = "0.0.0.0",
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` from a thread; ``port`` 0 picks a free one (``server.server_port``).

    The collector lives in a registry of its own: nothing is registered on the global default one.

    Raises:
        SettingsError: no broker is configured (up=0 forever would hide a configuration error).
    """
    settings.require_broker()
    registry = CollectorRegistry()
    registry.register(QueueCollector(settings, interval))
    return start_http_server(port, addr=addr, registry=registry)


def serve(
    settings: Settings | None = None,
    port: int = DEFAULT_PORT,
    interval: float = DEFAULT_INTERVAL,
    addr: str = "0.0.0.0",
) -> None:
    """Serve ``/metrics`` until SIGTERM or SIGINT (main thread only: it installs handlers)."""
    server, thread = start(settings or load_settings(), port, interval, addr)
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    logger.info("tasklane exporter: serving /metrics on %s:%d", addr, server.server_port)
    try:
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.shutdown()
        server.server_close()
        thread.join(BROKER_TIMEOUT)
