"""Prototype, not used by Tasklane: a Redis publish path that bypasses Kombu's ``Producer.publish``.

Profiling ``Publisher.publish_many`` shows ~11 us/message in Tasklane's own encoding and ~22 us in
Kombu's ``Producer.publish`` (message dict, delivery tag, base64 body, envelope JSON, per-message
routing), so Kombu alone caps the bulk path near 45,000 msg/s on the benchmark machine. For single
publishes Kombu's Redis transport also builds a new ``redis.Redis`` client object per message
(~50 us, ``Channel.conn_or_acquire``). This prototype writes Kombu's Redis envelope itself and sends
it with one long-lived redis-py client (pipelined for bulk), to measure what that would buy.

It reproduces Kombu's virtual-transport envelope (``body`` base64, ``properties.delivery_info``,
``body_encoding``, ``delivery_tag``) and its priority sub-list naming (``queue:N``) as configured by
:mod:`tasklane.wire.broker`; ``verify()`` checks each run that its message equals the Kombu path's,
ids and timestamps aside.

It also times ``Publisher._encode`` with a prebuilt JSON encoder in ``protocol.encode_body``.

Usage: ``.venv/bin/python bench/prototype_publish.py [--single N] [--bulk N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TASKLANE_BROKER_URL", "redis://127.0.0.1:6379/12")
os.environ.setdefault("TASKLANE_NAMESPACE", "perf.")

import noop_service as svc  # noqa: E402  (needs the environment above)

from tasklane.contracts import TaskContract  # noqa: E402
from tasklane.errors import PayloadValidationError  # noqa: E402
from tasklane.publish import Publisher, TaskHandle  # noqa: E402
from tasklane.wire.broker import PRIORITY_SEPARATOR, redis_queue_keys  # noqa: E402
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, TaskMessage  # noqa: E402
from tasklane.wire.routing import queue_name  # noqa: E402


class RedisFastPublisher(Publisher):
    """``Publisher`` whose Redis sends skip Kombu's producer; AMQP would keep the Kombu path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redis = redis.Redis.from_url(self.settings.require_broker())

    def _envelope(self, queue: str, message: TaskMessage) -> tuple[str, bytes]:
        """The Redis list and the JSON Kombu's virtual transport would have pushed there."""
        priority = int(message.properties.get("priority", 0))
        key = f"{queue}{PRIORITY_SEPARATOR}{priority}" if priority else queue
        envelope = {
            "body": base64.b64encode(message.body).decode(),
            "content-encoding": CONTENT_ENCODING,
            "content-type": CONTENT_TYPE,
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return key, json.dumps(envelope).encode()

    def publish(
        self,
        task: str | TaskContract[Any, Any],
        payload: BaseModel | Mapping[str, Any],
        *,
        task_id: str | None = None,
        priority: int | None = None,
    ) -> TaskHandle[Any]:
        contract = self.contract(task)
        message = self._encode(contract, payload, task_id, priority)
        key, raw = self._envelope(queue_name(contract, self.settings.namespace), message)
        with self._lock:
            self._producer_for(contract)  # declares once, as the Kombu path does
            self._redis.lpush(key, raw)
        return TaskHandle(message.task_id, contract, self._results)

    def publish_many(
        self,
        task: str | TaskContract[Any, Any],
        payloads: Iterable[BaseModel | Mapping[str, Any]],
        *,
        batch_size: int = 1000,
        progress: Any = None,
    ) -> list[TaskHandle[Any]]:
        contract = self.contract(task)
        queue = queue_name(contract, self.settings.namespace)
        messages = []
        for index, payload in enumerate(payloads):
            try:
                messages.append(self._encode(contract, payload, None, None))
            except PayloadValidationError as exc:
                located = [replace(problem, item=f"[{index}]") for problem in exc.problems]
                raise type(exc)(contract.name, located) from None
        with self._lock:
            self._producer_for(contract)
            for start in range(0, len(messages), batch_size):
                pipe = self._redis.pipeline(transaction=False)
                for message in messages[start : start + batch_size]:
                    pipe.lpush(*self._envelope(queue, message))
                pipe.execute()
        return [TaskHandle(m.task_id, contract, self._results) for m in messages]

    def close(self) -> None:
        super().close()
        self._redis.close()


def purge(client: redis.Redis) -> None:
    client.unlink(*redis_queue_keys(queue_name(svc.NOOP, svc.settings.namespace)))


def rate(count: int, start: float) -> float:
    return count / (time.perf_counter() - start)


def measure(
    publisher: Publisher, client: redis.Redis, single: int, bulk: int
) -> tuple[float, float]:
    publisher.publish(svc.NOOP, {"n": -1})
    purge(client)
    start = time.perf_counter()
    for n in range(single):
        publisher.publish(svc.NOOP, {"n": n})
    single_rate = rate(single, start)
    purge(client)
    start = time.perf_counter()
    publisher.publish_many(svc.NOOP, ({"n": n} for n in range(bulk)))
    bulk_rate = rate(bulk, start)
    purge(client)
    return single_rate, bulk_rate


def verify(client: redis.Redis) -> None:
    """The prototype's message in the same list and same shape as the Kombu path's."""
    with Publisher(svc.settings, registry=svc.BENCH_REGISTRY) as stock:
        stock.publish(svc.NOOP, {"n": 7}, task_id="stock")
    with RedisFastPublisher(svc.settings, registry=svc.BENCH_REGISTRY) as fast:
        fast.publish(svc.NOOP, {"n": 7}, task_id="fast")
    lists = {k: client.lrange(k, 0, -1) for k in redis_queue_keys("perf.bench.noop")}
    (key, raw), *rest = [(k, v) for k, v in lists.items() if v]
    assert not rest and len(raw) == 2, f"messages landed in {list(lists)}"
    a, b = (json.loads(m) for m in raw)
    for envelope in (a, b):
        envelope["properties"]["delivery_tag"] = "-"
        for name in ("id", "root_id", "x-tasklane-published-at", "origin"):
            envelope["headers"][name] = "-"
        envelope["properties"]["correlation_id"] = "-"
    assert a == b, f"envelopes differ:\n{a}\n{b}"
    print(f"verify: identical envelopes (ids and timestamps aside) in {key}")
    purge(client)


def encode_micro(rounds: int, count: int = 50_000) -> None:
    """``Publisher._encode`` as shipped, then with a prebuilt ``JSONEncoder`` in ``encode_body``.

    ``json.dumps`` with non-default ``separators`` builds a new encoder on every call; patching
    this process's ``tasklane.wire.protocol.encode_body`` measures the change without editing
    Tasklane.
    """
    import tasklane.wire.protocol as protocol

    encoder = json.JSONEncoder(separators=(",", ":"))
    embed = protocol._EMBED

    def prebuilt(kwargs: dict[str, Any], args: list[Any] | None = None) -> bytes:
        return encoder.encode([args or [], kwargs, embed]).encode()

    stock = protocol.encode_body
    assert prebuilt({"n": 1}) == stock({"n": 1})
    with Publisher(svc.settings, registry=svc.BENCH_REGISTRY) as publisher:
        timings: dict[str, list[float]] = {"stock": [], "prebuilt encoder": []}
        for _ in range(rounds):
            for name, function in (("stock", stock), ("prebuilt encoder", prebuilt)):
                protocol.encode_body = function
                start = time.perf_counter()
                for n in range(count):
                    publisher._encode(svc.NOOP, {"n": n}, None, None)
                timings[name].append((time.perf_counter() - start) / count * 1e6)
        protocol.encode_body = stock
    for name, values in timings.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"_encode, {name:17s} median {statistics.median(values):6.2f} us/msg  ({shown})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--single", type=int, default=10_000)
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(svc.settings.require_broker())
    verify(client)
    figures: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, cls in (("stock", Publisher), ("prototype", RedisFastPublisher)):
            with cls(svc.settings, registry=svc.BENCH_REGISTRY) as publisher:
                single, bulk = measure(publisher, client, args.single, args.bulk)
            figures.setdefault(f"{name} publish", []).append(single)
            figures.setdefault(f"{name} publish_many", []).append(bulk)
    for name, values in figures.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:24s} median {statistics.median(values):8.0f} msg/s  ({shown})")
    encode_micro(args.rounds)
    from run import cleanup

    cleanup(client)  # queues, bindings and anything else under the benchmark's namespace
    return 0


if __name__ == "__main__":
    sys.exit(main())
