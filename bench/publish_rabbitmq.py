"""Publish rate on RabbitMQ with publisher confirms: per-message confirms against batched ones.

In one run, against one RabbitMQ, each round measures in turn:

* **baseline**: a Kombu ``Producer.publish`` loop on a ``confirm_publish`` connection, what
  Tasklane sent through before batched confirms: py-amqp waits for the broker's ack after every
  message;
* **ConfirmedChannel.publish** (``tasklane.wire.amqp_confirms``) in batches of 1,000: each batch
  is sent, then its acks are waited for at once;
* **Publisher.publish_many** of the same payloads (the target's row): validation and encoding
  included, sent through ``ConfirmedChannel``.

Both send the same 50,000 ready-encoded messages of the bench contract (``bench/noop_service.py``,
payload ``{"n": i}``) to its queue in a namespace of the benchmark's own, which is purged before and
after every measurement and deleted at the end. A measurement counts only when the queue holds
every message afterwards. Prints the median of 3 rounds, its ratio against the baseline and
whether the target of 10,000 msg/s is met.

    .venv/bin/python bench/publish_rabbitmq.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from kombu.connection import Connection  # noqa: E402
from kombu.messaging import Producer  # noqa: E402
from run import Figure, print_table, ratio, target_met  # noqa: E402

from tasklane.contracts import TaskContract  # noqa: E402
from tasklane.publish import Publisher  # noqa: E402
from tasklane.wire.amqp_confirms import ConfirmedChannel  # noqa: E402
from tasklane.wire.broker import connect  # noqa: E402
from tasklane.wire.protocol import (  # noqa: E402
    CONTENT_ENCODING,
    CONTENT_TYPE,
    TaskMessage,
    task_message,
)
from tasklane.wire.routing import (  # noqa: E402
    QueueOptions,
    dead_letter_exchange,
    dlq_name,
    queue_name,
    work_queue,
)

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/12"
#: A namespace of this benchmark's own: everything in it is deleted at the end.
NAMESPACE = "perf-amqp."
TARGET = 10_000.0
#: Seconds a send or a wait for acks may take before the measurement fails.
TIMEOUT = 60.0


def bench_service(broker_url: str) -> ModuleType:
    """``bench/noop_service.py``, its settings on this benchmark's RabbitMQ and namespace.

    It reads them from the environment when first imported; a Publisher row takes them from it.
    """
    os.environ["TASKLANE_BROKER_URL"] = broker_url
    os.environ["TASKLANE_NAMESPACE"] = NAMESPACE
    # Required besides an AMQP broker; nothing here reads a result, so nothing connects to it.
    os.environ.setdefault("TASKLANE_RESULT_BACKEND", DEFAULT_RESULT_BACKEND)
    import noop_service

    return noop_service


@dataclass(frozen=True)
class Options:
    """What to run, and how much of it."""

    broker_url: str
    messages: int
    batch_size: int
    rounds: int


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker", default=DEFAULT_BROKER_URL, help=f"AMQP URL (default {DEFAULT_BROKER_URL})"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run for a quick check")
    parser.add_argument("--messages", type=int, help="messages per measurement (50000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per batch (1000)")
    parser.add_argument("--rounds", type=int, help="rounds; figures are medians (3)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    return Options(
        broker_url=args.broker,
        messages=args.messages or (5_000 if quick else 50_000),
        batch_size=args.batch_size,
        rounds=args.rounds or 3,
    )


# --------------------------------------------------------------------------- the bench queue


class BenchQueue:
    """The bench contract's queue in this benchmark's namespace, on a connection of its own."""

    def __init__(
        self, broker_url: str, contract: TaskContract[Any, Any], options: QueueOptions
    ) -> None:
        self.name = queue_name(contract, NAMESPACE)
        self._queue = work_queue(contract, NAMESPACE, options)
        self._connection = Connection(broker_url)
        self._channel = self._connection.channel()
        # Declared as a Publisher declares it (its queue type and exchange), so a Publisher row
        # finds it as it expects.
        self._queue.bind(self._channel).declare()

    def depth(self) -> int:
        return int(self._channel.queue_declare(self.name, passive=True).message_count)

    def purge(self) -> None:
        self._channel.queue_purge(self.name)

    def delete(self) -> None:
        """Delete everything a publisher may have declared in the namespace, then disconnect."""
        self._channel.queue_delete(self.name)
        self._channel.queue_delete(dlq_name(self.name))
        self._channel.exchange_delete(self._queue.exchange.name)
        self._channel.exchange_delete(dead_letter_exchange(NAMESPACE).name)
        self._connection.release()


@contextmanager
def bench_queue(
    broker_url: str, contract: TaskContract[Any, Any], options: QueueOptions
) -> Iterator[BenchQueue]:
    queue = BenchQueue(broker_url, contract, options)
    try:
        yield queue
    finally:
        queue.delete()


def measure(queue: BenchQueue, count: int, action: Callable[[], object]) -> float:
    """msg/s of one call of ``action``, which must leave exactly ``count`` messages in ``queue``.

    The queue is purged before and after, so every measurement starts from an empty queue.
    """
    queue.purge()
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    queued = queue.depth()
    queue.purge()
    if queued != count:
        raise RuntimeError(f"{queued} messages in {queue.name} after publishing {count}")
    return count / elapsed


# --------------------------------------------------------------------------- what is measured


def bench_messages(contract: TaskContract[Any, Any], count: int) -> list[TaskMessage]:
    """``count`` encoded messages of ``contract``, payloads ``{"n": i}``."""
    return [task_message(contract.name, str(uuid.uuid4()), {"n": n}) for n in range(count)]


def producer_publish_loop(
    connection: Connection, queue: str, messages: list[TaskMessage]
) -> Callable[[], None]:
    """The baseline: Kombu's ``Producer.publish`` per message, as Tasklane sends today."""
    producer = Producer(connection.default_channel)

    def publish() -> None:
        for message in messages:
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                headers=message.headers,
                delivery_mode=2,
                confirm_timeout=TIMEOUT,
                **message.properties,
            )

    return publish


def confirmed_batches(
    confirmed: ConfirmedChannel, queue: str, messages: list[TaskMessage], batch_size: int
) -> Callable[[], None]:
    """``ConfirmedChannel.publish`` over the messages, ``batch_size`` at a time."""

    def publish() -> None:
        for start in range(0, len(messages), batch_size):
            confirmed.publish(messages[start : start + batch_size], queue, timeout=TIMEOUT)

    return publish


def run(opts: Options) -> dict[str, Figure]:
    svc = bench_service(opts.broker_url)
    settings = svc.settings
    notes = f"{opts.messages}"
    figures = {
        "baseline": Figure(
            "publish rate, RabbitMQ", "Producer.publish loop, confirm each", "msg/s", notes=notes
        ),
        "batched": Figure(
            "publish rate, RabbitMQ",
            f"ConfirmedChannel.publish, batches of {opts.batch_size}",
            "msg/s",
            baseline="baseline",
            notes=notes,
        ),
        "publish_many": Figure(
            "publish rate, RabbitMQ",
            f"Publisher.publish_many, batches of {opts.batch_size}",
            "msg/s",
            baseline="baseline",
            target=TARGET,
            target_kind="absolute",
            notes=f"{notes} payloads, validated and encoded in the time",
        ),
    }
    messages = bench_messages(svc.NOOP, opts.messages)
    ack_frames: list[int] = []
    with (
        bench_queue(opts.broker_url, svc.NOOP, QueueOptions.of(settings)) as queue,
        connect(settings) as plain,
        connect(settings) as batched,
        Publisher(settings, registry=svc.BENCH_REGISTRY) as publisher,
    ):
        confirmed = ConfirmedChannel(Producer(batched.default_channel))
        payloads = [{"n": n} for n in range(opts.messages)]
        # A row is a figure above and an action here under the same key.
        actions = {
            "baseline": producer_publish_loop(plain, queue.name, messages),
            "batched": confirmed_batches(confirmed, queue.name, messages, opts.batch_size),
            "publish_many": lambda: publisher.publish_many(
                svc.NOOP, payloads, batch_size=opts.batch_size
            ),
        }
        # Warm: connections, channels, confirm mode.
        producer_publish_loop(plain, queue.name, messages[:1])()
        confirmed.publish(messages[:1], queue.name, timeout=TIMEOUT)
        publisher.publish_many(svc.NOOP, payloads[:1])
        for round_no in range(opts.rounds):
            rates: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for key, action in actions.items():
                frames, started = confirmed.ack_frames, time.process_time()
                rates[key] = measure(queue, opts.messages, action)
                # This process's CPU per message: the part of a rate a busy host cannot blur.
                cpu[key] = (time.process_time() - started) / opts.messages * 1e6
                figures[key].values.append(rates[key])
                if key == "batched":
                    ack_frames.append(confirmed.ack_frames - frames)
            print(
                f"  round {round_no + 1}: baseline {rates['baseline']:.0f} msg/s "
                f"({cpu['baseline']:.0f} us CPU/msg), batched {rates['batched']:.0f} msg/s "
                f"({cpu['batched']:.0f} us CPU/msg, {ack_frames[-1]} ack frames for "
                f"{opts.messages} messages), publish_many {rates['publish_many']:.0f} msg/s "
                f"({cpu['publish_many']:.0f} us CPU/msg)",
                flush=True,
            )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    print(
        f"RabbitMQ {opts.broker_url}: {opts.messages} messages per measurement, "
        f"batches of {opts.batch_size}, {opts.rounds} rounds",
        flush=True,
    )
    figures = run(opts)
    print_table(figures)
    batched = figures["publish_many"]
    times = ratio(batched, figures)
    met = "met" if target_met(batched, figures) else "missed"
    print(
        f"publish_many {batched.median:.0f} msg/s = {times or float('nan'):.1f}x the baseline "
        f"({figures['baseline'].median:.0f} msg/s); target >= {TARGET:,.0f} msg/s {met}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
